//! Helpers shared by the unit tests of `nn` (compiled for tests only).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The backend the tests run on: the script backend on the Flex CPU device.
pub type TestBackend = super::ScriptBackend;

/// The Flex CPU device.
pub fn test_device() -> super::DispatchDevice {
    super::device("cpu").expect("the cpu device always exists")
}

/// All values of a float tensor as f64, in row-major order.
pub fn tensor_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Assert that two slices agree within an absolute tolerance.
pub fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "element {i}: {a} vs {e} (tolerance {tolerance})"
        );
    }
}

/// Largest absolute difference relative to the largest magnitude of `expected`.
pub fn relative_error(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    let scale = expected.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}
