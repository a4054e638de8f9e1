//! The box coder: boxes ↔ regression deltas relative to anchors (nnDetection `BoxCoderND`,
//! in our `[d0, h0, w0, d1, h1, w1]` order).
//!
//! Deltas are `(w_d·Δc_d/e_d, w_h·Δc_h/e_h, w_w·Δc_w/e_w, w_sd·ln(s_d/e_d), w_sh·ln(s_h/e_h),
//! w_sw·ln(s_w/e_w))`: centre offsets in units of the anchor extent `e`, then log-size ratios.
//! Decoding clamps the log-size deltas at `size_clamp` (ln(1000/16)) before the exponential.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::volume::boxes::Box3;

/// Encodes boxes as deltas relative to anchors and decodes them back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoxCoder {
    /// Multipliers of the six deltas (centre d, h, w, then log-size d, h, w).
    pub weights: [f64; 6],
    /// Upper clamp of the decoded log-size deltas.
    pub size_clamp: f64,
}

impl Default for BoxCoder {
    fn default() -> Self {
        Self {
            weights: [1.0; 6],
            size_clamp: (1000.0f64 / 16.0).ln(),
        }
    }
}

impl BoxCoder {
    /// Deltas that turn `anchor` into `target`.
    pub fn encode(&self, target: &Box3, anchor: &Box3) -> [f64; 6] {
        let mut out = [0.0; 6];
        for a in 0..3 {
            let ea = anchor[a + 3] - anchor[a];
            let ca = anchor[a] + 0.5 * ea;
            let et = target[a + 3] - target[a];
            let ct = target[a] + 0.5 * et;
            out[a] = self.weights[a] * (ct - ca) / ea;
            out[a + 3] = self.weights[a + 3] * (et / ea).ln();
        }
        out
    }

    /// The box that `deltas` make of `anchor`.
    pub fn decode(&self, deltas: &[f64; 6], anchor: &Box3) -> Box3 {
        let mut out = [0.0; 6];
        for a in 0..3 {
            let ea = anchor[a + 3] - anchor[a];
            let ca = anchor[a] + 0.5 * ea;
            let c = deltas[a] / self.weights[a] * ea + ca;
            let size = (deltas[a + 3] / self.weights[a + 3])
                .min(self.size_clamp)
                .exp()
                * ea;
            out[a] = c - 0.5 * size;
            out[a + 3] = c + 0.5 * size;
        }
        out
    }

    /// Differentiable decoding of paired deltas and anchors.
    ///
    /// # Shapes
    /// - deltas, anchors: `[P, 6]`; output boxes: `[P, 6]`
    pub fn decode_tensor<B: Backend>(
        &self,
        deltas: Tensor<B, 2>,
        anchors: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let [p, _] = deltas.dims();
        let device = deltas.device();
        let inv = self.weights.map(|w| (1.0 / w) as f32);
        let inv_center =
            Tensor::<B, 1>::from_floats([inv[0], inv[1], inv[2]], &device).reshape([1, 3]);
        let inv_size =
            Tensor::<B, 1>::from_floats([inv[3], inv[4], inv[5]], &device).reshape([1, 3]);
        let lo = anchors.clone().slice([0..p, 0..3]);
        let extent = anchors.slice([0..p, 3..6]) - lo.clone();
        let center = lo + extent.clone().mul_scalar(0.5);
        let dc = deltas.clone().slice([0..p, 0..3]) * inv_center;
        let ds = (deltas.slice([0..p, 3..6]) * inv_size).clamp_max(self.size_clamp);
        let c = dc * extent.clone() + center;
        let half = ds.exp() * extent.mul_scalar(0.5);
        Tensor::cat(vec![c.clone() - half.clone(), c + half], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{TestBackend, assert_close, tensor_values, test_device};
    use burn::tensor::TensorData;

    #[test]
    fn encode_decode_round_trips_with_and_without_weights() {
        let anchors = [
            [-2.0, -4.0, -8.0, 2.0, 4.0, 8.0],
            [10.0, 3.0, 0.5, 18.0, 7.0, 16.5],
        ];
        let targets = [
            [0.5, -1.0, -3.0, 6.0, 2.0, 9.0],
            [9.0, 2.0, 1.0, 12.0, 30.0, 14.0],
        ];
        for coder in [
            BoxCoder::default(),
            BoxCoder {
                weights: [10.0, 10.0, 10.0, 5.0, 5.0, 5.0],
                ..Default::default()
            },
        ] {
            for (a, t) in anchors.iter().zip(&targets) {
                let d = coder.encode(t, a);
                let back = coder.decode(&d, a);
                for k in 0..6 {
                    assert!((back[k] - t[k]).abs() < 1e-9, "{back:?} vs {t:?}");
                }
            }
        }
        // Hand value: centre offset 0.5·4/4 on d, log 2 size ratio on w.
        let d = BoxCoder::default().encode(&[0.0, -4.0, -16.0, 4.0, 4.0, 16.0], &anchors[0]);
        assert_close(&d, &[0.5, 0.0, 0.0, 0.0, 0.0, 2.0f64.ln()], 1e-12);
    }

    #[test]
    fn decoding_clamps_the_log_size_and_the_tensor_version_agrees() {
        let coder = BoxCoder::default();
        let anchor = [0.0, 0.0, 0.0, 16.0, 16.0, 16.0];
        let huge = coder.decode(&[0.0, 0.0, 0.0, 50.0, 0.0, 0.0], &anchor);
        assert!(
            (huge[3] - huge[0] - 1000.0).abs() < 1e-6,
            "clamped to 1000 / 16 × 16"
        );

        let deltas = [
            [0.1, -0.2, 0.3, 0.5, -0.4, 50.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ];
        let anchors = [anchor, [2.0, 4.0, 6.0, 5.0, 9.0, 13.0]];
        let device = test_device();
        let t = |rows: &[[f64; 6]; 2]| {
            Tensor::<TestBackend, 2>::from_data(
                TensorData::new(
                    rows.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>(),
                    [2, 6],
                ),
                &device,
            )
        };
        let decoded = tensor_values(coder.decode_tensor(t(&deltas), t(&anchors)));
        let expected: Vec<f64> = deltas
            .iter()
            .zip(&anchors)
            .flat_map(|(d, a)| coder.decode(d, a))
            .collect();
        assert_close(&decoded, &expected, 1e-3);
    }
}
