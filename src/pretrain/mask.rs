//! Block masks of MAE and S3D: a coarse grid of cells, exactly ⌊ratio · cells⌋ of them masked
//! per sample, expanded to any feature resolution by nearest repetition.

use rand::Rng;
use rand::seq::index::sample;

/// The cell masks of one batch: `1.0` visible, `0.0` masked.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMask {
    /// Cells per axis `[D, H, W]`.
    pub grid: [usize; 3],
    /// One mask per sample, row-major over the grid.
    pub cells: Vec<Vec<f32>>,
}

impl BlockMask {
    /// Draw a mask per sample on the grid `patch / block`, masking exactly
    /// `⌊ratio · cells⌋` cells chosen uniformly without replacement.
    pub fn draw<R: Rng + ?Sized>(
        batch: usize,
        patch: [usize; 3],
        block: usize,
        ratio: f64,
        rng: &mut R,
    ) -> Self {
        let grid = patch.map(|p| p / block);
        let total: usize = grid.iter().product();
        let masked = (ratio * total as f64).floor() as usize;
        let cells = (0..batch)
            .map(|_| {
                let mut m = vec![1.0f32; total];
                for i in sample(rng, total, masked) {
                    m[i] = 0.0;
                }
                m
            })
            .collect();
        Self { grid, cells }
    }

    /// Number of masked cells of each sample.
    pub fn masked_counts(&self) -> Vec<usize> {
        self.cells
            .iter()
            .map(|m| m.iter().filter(|&&v| v == 0.0).count())
            .collect()
    }

    /// The masks at a feature resolution `shape` `[D, H, W]`, as a flat `[N, 1, D, H, W]`
    /// buffer. A resolution that the grid divides repeats every cell; a resolution coarser
    /// than the grid on any axis is fully visible (S3D's dense bottleneck rule). Returns
    /// `None` in that dense case.
    pub fn at_resolution(&self, shape: [usize; 3]) -> Option<Vec<f32>> {
        if (0..3).any(|a| shape[a] < self.grid[a] || !shape[a].is_multiple_of(self.grid[a])) {
            return None;
        }
        let repeat: [usize; 3] = std::array::from_fn(|a| shape[a] / self.grid[a]);
        let [d, h, w] = shape;
        let mut out = Vec::with_capacity(self.cells.len() * d * h * w);
        for m in &self.cells {
            for z in 0..d {
                for y in 0..h {
                    let row = (z / repeat[0]) * self.grid[1] * self.grid[2]
                        + (y / repeat[1]) * self.grid[2];
                    out.extend((0..w).map(|x| m[row + x / repeat[2]]));
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn exactly_floor_ratio_cells_are_masked_per_sample() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mask = BlockMask::draw(5, [32, 32, 32], 4, 0.75, &mut rng);
        assert_eq!(mask.grid, [8, 8, 8]);
        assert_eq!(mask.masked_counts(), vec![384; 5]);
        assert_ne!(mask.cells[0], mask.cells[1], "samples draw independently");
        let mask = BlockMask::draw(2, [8, 8, 4], 4, 0.6, &mut rng);
        // 2·2·1 = 4 cells, ⌊2.4⌋ = 2.
        assert_eq!(mask.masked_counts(), vec![2, 2]);
    }

    #[test]
    fn expansion_repeats_cells_and_coarse_levels_are_dense() {
        let mask = BlockMask {
            grid: [1, 2, 2],
            cells: vec![vec![1.0, 0.0, 0.0, 1.0]],
        };
        let full = mask.at_resolution([2, 4, 4]).unwrap();
        assert_eq!(full.len(), 32);
        // Row 0 of slice 0: cells (0,0) (0,1) repeated twice each.
        assert_eq!(&full[0..4], &[1.0, 1.0, 0.0, 0.0]);
        // Row 2 of slice 1: cells (1,0) (1,1).
        assert_eq!(&full[16 + 8..16 + 12], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(
            mask.at_resolution([1, 2, 2]).unwrap(),
            vec![1.0, 0.0, 0.0, 1.0]
        );
        assert!(
            mask.at_resolution([1, 1, 1]).is_none(),
            "coarser than the grid is dense"
        );
    }
}
