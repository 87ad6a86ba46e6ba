//! Noisy linear imputation (ROAD, Rong et al. 2022): every removed pixel becomes the weighted
//! mean of its 8 neighbours (direct ones weigh 1/6, diagonal ones 1/12), a sparse linear
//! system over all removed pixels at once, plus Gaussian noise.
//!
//! The system is solved by a Jacobi-preconditioned conjugate gradient written here: its
//! matrix is a fixed 3x3 stencil on the pixel grid, symmetric positive definite in the form
//! used below, so a matrix-free solver of a few dozen lines does the job of a general sparse
//! direct solver and needs no sparse-matrix dependency.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// Settings of [`impute_linear`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImputeConfig {
    /// Standard deviation of the noise added to each imputed value, per channel.
    pub noise_std: [f64; 3],
    /// The solver stops when the residual norm falls below this fraction of the right-hand
    /// side's.
    pub tolerance: f64,
    /// The solver's iteration limit (it then keeps its best estimate).
    pub max_iterations: usize,
}

impl Default for ImputeConfig {
    fn default() -> Self {
        Self {
            noise_std: [0.0; 3],
            tolerance: 1e-6,
            max_iterations: 2000,
        }
    }
}

const NEIGHBOURS: [(isize, isize, f64); 8] = [
    (-1, 0, 1.0 / 6.0),
    (1, 0, 1.0 / 6.0),
    (0, -1, 1.0 / 6.0),
    (0, 1, 1.0 / 6.0),
    (-1, -1, 1.0 / 12.0),
    (-1, 1, 1.0 / 12.0),
    (1, -1, 1.0 / 12.0),
    (1, 1, 1.0 / 12.0),
];

/// Replaces the pixels of `image` (C, `height`, `width`, CHW) where `removed` is true by
/// their linear imputation from the kept ones, plus noise drawn from `seed`; kept pixels are
/// unchanged. Equal inputs and seeds give equal outputs.
///
/// Each removed pixel i satisfies Σ_j w_ij (x_i − x_j) = 0 over its in-image neighbours j
/// (the weighted-mean condition scaled by Σ_j w_ij, which makes the matrix symmetric). A
/// group of removed pixels with no kept neighbour anywhere (everything removed) stays at
/// the kept pixels' mean, 0 when there are none.
pub fn impute_linear(
    image: &mut [f32],
    height: usize,
    width: usize,
    removed: &[bool],
    config: &ImputeConfig,
    seed: u64,
) {
    let plane = height * width;
    let unknowns: Vec<usize> = (0..plane).filter(|&p| removed[p]).collect();
    if unknowns.is_empty() || plane == 0 {
        return;
    }
    let system = System::new(height, width, removed, &unknowns);
    let mut rng = StdRng::seed_from_u64(seed);
    for (c, channel) in image.chunks_mut(plane).enumerate() {
        // Start from the mean of the kept pixels: far closer than 0 for natural images.
        let kept: Vec<f64> = channel
            .iter()
            .zip(removed)
            .filter(|(_, &r)| !r)
            .map(|(&v, _)| v as f64)
            .collect();
        let start = match kept.len() {
            0 => 0.0,
            k => kept.iter().sum::<f64>() / k as f64,
        };
        let mut x = system.solve(channel, start, config);
        let std = config.noise_std.get(c).copied().unwrap_or(0.0);
        if std > 0.0 {
            if let Ok(normal) = Normal::new(0.0, std) {
                for v in &mut x {
                    *v += normal.sample(&mut rng);
                }
            }
        }
        for (&p, v) in unknowns.iter().zip(x) {
            channel[p] = v as f32;
        }
    }
}

/// The imputation system in compressed rows: for unknown i, diagonal Σ_j w_ij, off-diagonal
/// −w_ij for unknown neighbours, and the known neighbours that form the right-hand side.
struct System {
    diag: Vec<f64>,
    row: Vec<usize>,
    unknown: Vec<(u32, f64)>,
    known_row: Vec<usize>,
    known: Vec<(u32, f64)>,
}

impl System {
    fn new(height: usize, width: usize, removed: &[bool], unknowns: &[usize]) -> Self {
        let mut index = vec![u32::MAX; height * width];
        for (i, &p) in unknowns.iter().enumerate() {
            index[p] = i as u32;
        }
        let mut s = System {
            diag: Vec::with_capacity(unknowns.len()),
            row: vec![0],
            unknown: Vec::new(),
            known_row: vec![0],
            known: Vec::new(),
        };
        for &p in unknowns {
            let (r, c) = ((p / width) as isize, (p % width) as isize);
            let mut d = 0.0;
            for &(dr, dc, w) in &NEIGHBOURS {
                let (nr, nc) = (r + dr, c + dc);
                if nr < 0 || nc < 0 || nr >= height as isize || nc >= width as isize {
                    continue;
                }
                let q = nr as usize * width + nc as usize;
                d += w;
                if removed[q] {
                    s.unknown.push((index[q], w));
                } else {
                    s.known.push((q as u32, w));
                }
            }
            // A pixel without neighbours (a 1x1 image) solves x = 0 instead of 0 = 0.
            s.diag.push(if d > 0.0 { d } else { 1.0 });
            s.row.push(s.unknown.len());
            s.known_row.push(s.known.len());
        }
        s
    }

    fn apply(&self, x: &[f64], out: &mut [f64]) {
        for (i, o) in out.iter_mut().enumerate() {
            let off: f64 = self.unknown[self.row[i]..self.row[i + 1]]
                .iter()
                .map(|&(j, w)| w * x[j as usize])
                .sum();
            *o = self.diag[i] * x[i] - off;
        }
    }

    /// Preconditioned conjugate gradient for the unknowns of one channel.
    fn solve(&self, channel: &[f32], start: f64, config: &ImputeConfig) -> Vec<f64> {
        let n = self.diag.len();
        let b: Vec<f64> = (0..n)
            .map(|i| {
                self.known[self.known_row[i]..self.known_row[i + 1]]
                    .iter()
                    .map(|&(q, w)| w * channel[q as usize] as f64)
                    .sum()
            })
            .collect();
        let mut x = vec![start; n];
        let mut ax = vec![0.0; n];
        self.apply(&x, &mut ax);
        let mut r: Vec<f64> = b.iter().zip(&ax).map(|(b, a)| b - a).collect();
        let b_norm = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        let stop = config.tolerance * b_norm.max(f64::MIN_POSITIVE);
        let mut z: Vec<f64> = r.iter().zip(&self.diag).map(|(r, d)| r / d).collect();
        let mut p = z.clone();
        let mut rz: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
        let mut ap = vec![0.0; n];
        for _ in 0..config.max_iterations {
            if r.iter().map(|v| v * v).sum::<f64>().sqrt() <= stop {
                break;
            }
            self.apply(&p, &mut ap);
            let pap: f64 = p.iter().zip(&ap).map(|(a, b)| a * b).sum();
            if pap <= 0.0 || !pap.is_finite() {
                break;
            }
            let alpha = rz / pap;
            for i in 0..n {
                x[i] += alpha * p[i];
                r[i] -= alpha * ap[i];
                z[i] = r[i] / self.diag[i];
            }
            let rz_next: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
            let beta = rz_next / rz;
            rz = rz_next;
            for i in 0..n {
                p[i] = z[i] + beta * p[i];
            }
        }
        x
    }
}
