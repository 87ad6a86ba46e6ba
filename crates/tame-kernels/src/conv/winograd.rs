//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! Each 2x2 block of outputs comes from a 4x4 block of input: with the filter transformed
//! once to U = G·g·Gᵀ and each input block to V = Bᵀ·d·B, the output block is Aᵀ·(U ⊙ V)·A.
//! Summed over input channels, the element-wise products become 16 GEMMs (one per position
//! of the 4x4 transform) of c_out x c_in by c_in x blocks: 16 multiplications per 4
//! outputs where the direct convolution needs 36, 2.25x fewer. The transforms add and
//! subtract only (and halve, exactly), so the result differs from the direct sum by
//! rounding alone.
//!
//! How it runs: the tasks are rows of output blocks of each image (as many per task as keep
//! its transformed input and products near 4 MB), in parallel; each transforms its input
//! (every padded row split into even and odd columns in one pass over pairs), runs the 16
//! GEMMs single-threaded into reusable per-thread buffers, and transforms the products into
//! its rows of the output, bias and ReLU included, writing every value once (no zero-fill
//! first). The transforms are zipped slice loops that the compiler vectorises, and the output
//! transform runs over all of a task's block rows at once. It pays only with enough input
//! channels and output pixels ([`applies`]); at 14x14 only with the filters prepared once
//! ([`transform_filters`] once for a frozen weight, 16/9 of the weight's size), since
//! transforming a 512x512 layer's filters again on every pass costs more than it saves.

use rayon::prelude::*;

use super::{gemm_unchecked, Geometry, SharedOutput, View};
use crate::scratch::with_buffer;
use crate::slices::split_pairs;
use crate::Float;

/// Positions of the 4x4 transform: one GEMM each, and the middle size of
/// [`transform_filters`]' result.
pub const POSITIONS: usize = 16;

/// Whether [`forward`] computes this convolution: 3x3, stride 1, with enough input
/// channels and output pixels that the transforms and the 16 GEMMs beat one GEMM over
/// the column matrix; `prepared`: its filters are already transformed
/// ([`transform_filters`]), so only the input and output transforms
/// count. Measured at batch 1 on two threads (`bench_conv`, and ResNet-50's shapes):
/// 64-512 input channels from 28x28 up, 1.0-1.5x faster (128 channels at 112x112: 15.5 ms
/// -> 11 ms); at 14x14 only with prepared filters (ResNet-50's 256-channel layer: 1.55 ms
/// -> 1.0 ms; transforming VGG-16's 512x512 filters again costs more than it saves there);
/// slower at 7x7.
pub(super) fn applies(g: &Geometry, prepared: bool) -> bool {
    let min_pixels = if prepared { 14 * 14 } else { 28 * 28 };
    g.k_h == 3
        && g.k_w == 3
        && g.stride == 1
        && g.c_in >= 64
        && g.batch * g.out_plane() >= min_pixels
}

/// Block columns (2-pixel output columns) and block rows of the output.
fn blocks(g: &Geometry) -> (usize, usize) {
    (g.out_w.div_ceil(2), g.out_h.div_ceil(2))
}

/// The filters of a (C_out, C_in, 3, 3) `weight` transformed for the Winograd path of
/// [`forward`](super::forward), (C_out, [`POSITIONS`], C_in): for a weight that serves many
/// passes unchanged (a frozen backbone's), so that they are transformed once.
///
/// U[co][p][ci] = (G·g·Gᵀ)[p] of each filter g = weight[co][ci], with
/// G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]. Position p's GEMM operand is the
/// strided view of rows co at p·c_in (gemm packs it either way), so each output channel's
/// values are written together.
pub fn transform_filters<T: Float>(c_out: usize, c_in: usize, weight: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let gk = |r: [T; 3]| {
        [
            r[0],
            (r[0] + r[1] + r[2]) * half,
            (r[0] - r[1] + r[2]) * half,
            r[2],
        ]
    };
    assert_eq!(weight.len(), c_out * c_in * 9);
    let mut u = vec![T::ZERO; c_out * POSITIONS * c_in];
    u.par_chunks_mut(POSITIONS * c_in)
        .zip(weight.par_chunks(9 * c_in))
        .for_each(|(u, filters)| {
            for (ci, f) in filters.chunks_exact(9).enumerate() {
                // G·g: each column of the filter transformed, then each row of the result.
                let cols = [0, 1, 2].map(|j| gk([f[j], f[3 + j], f[6 + j]]));
                for a in 0..4 {
                    let row = gk([cols[0][a], cols[1][a], cols[2][a]]);
                    for (b, value) in row.into_iter().enumerate() {
                        u[(4 * a + b) * c_in + ci] = value;
                    }
                }
            }
        });
    u
}

/// The rows of output blocks of one image each task computes: as many as keep the task's
/// transformed input and GEMM output near 4 MB, more tasks when that leaves a thread idle
/// or unevenly loaded (as [`super::tiles`]).
fn block_rows(g: &Geometry, threads: usize) -> Vec<std::ops::Range<usize>> {
    const MAX_VALUES: usize = 1 << 20;
    let (across, down) = blocks(g);
    let per_row = POSITIONS * g.c_in.max(g.c_out) * across;
    let max_rows = (MAX_VALUES / per_row).clamp(1, down);
    let mut count = down.div_ceil(max_rows);
    while (g.batch * count) % threads != 0 && g.batch * count < 4 * threads && count < down {
        count += 1;
    }
    let step = down.div_ceil(count);
    (0..down)
        .step_by(step)
        .map(|r| r..(r + step).min(down))
        .collect()
}

/// V[p][ci][n] = (Bᵀ·d·B)[p] of the 4x4 input block d under each output block n of
/// `rows`, with Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]; inputs
/// outside the image (the padding) are zero.
///
/// Rows are split into even and odd columns first, so that every step below reads and
/// writes whole contiguous runs (block bx covers columns 2bx..2bx + 4: even[bx], odd[bx],
/// even[bx + 1], odd[bx + 1]).
fn transform_input<T: Float>(
    g: &Geometry,
    image: &[T],
    rows: std::ops::Range<usize>,
    v: &mut [T],
    scratch: &mut Vec<T>,
) {
    let (across, _) = blocks(g);
    let count = rows.len() * across;
    // Eight runs of across + 1: the even and odd columns of four padded input rows.
    let len = across + 1;
    scratch.resize(8 * len, T::ZERO);
    for ci in 0..g.c_in {
        let plane = &image[ci * g.in_plane()..][..g.in_plane()];
        for (r, by) in rows.clone().enumerate() {
            let mut runs = scratch.chunks_exact_mut(len);
            let mut d: [[&mut [T]; 2]; 4] =
                std::array::from_fn(|_| [runs.next().unwrap(), runs.next().unwrap()]);
            for (i, [even, odd]) in d.iter_mut().enumerate() {
                even.fill(T::ZERO);
                odd.fill(T::ZERO);
                let Some(iy) = (2 * by + i).checked_sub(g.top).filter(|&iy| iy < g.h) else {
                    continue;
                };
                // Padded column c holds input column j = c - left: the input columns of
                // the parity of `left` land on even ones, from even[ceil(left / 2)] on.
                let mut input = &plane[iy * g.w..][..g.w];
                let first_even = g.left.div_ceil(2);
                if g.left % 2 == 1 {
                    // Input column 0 is padded column `left`, odd: odd[left / 2].
                    if let (Some(d), Some(&v)) = (odd.get_mut(g.left / 2), input.first()) {
                        *d = v;
                    }
                    input = &input[1..];
                }
                split_pairs(
                    input,
                    &mut even[first_even.min(len)..],
                    &mut odd[first_even.min(len)..],
                );
            }
            // Bᵀ·d, in place: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
            let [[e0, o0], [e1, o1], [e2, o2], [e3, o3]] = d;
            for (d0, d1, d2, d3) in [(e0, e1, e2, e3), (o0, o1, o2, o3)] {
                for (((x0, x1), x2), x3) in d0
                    .iter_mut()
                    .zip(d1.iter_mut())
                    .zip(d2.iter_mut())
                    .zip(d3.iter_mut())
                {
                    let (a, b, c, d) = (*x0, *x1, *x2, *x3);
                    *x0 = a - c;
                    *x1 = b + c;
                    *x2 = c - b;
                    *x3 = b - d;
                }
            }
            let t = scratch.chunks_exact(len).collect::<Vec<_>>();
            for a in 0..4 {
                let (even, odd) = (t[2 * a], t[2 * a + 1]);
                // (·)·B: columns (s0 - s2, s1 + s2, s2 - s1, s1 - s3) of each block.
                let at = |b: usize| ((4 * a + b) * g.c_in + ci) * count + r * across;
                let (s0, s1) = (&even[..across], &odd[..across]);
                let (s2, s3) = (&even[1..], &odd[1..]);
                combine(&mut v[at(0)..][..across], s0, s2, |a, c| a - c);
                combine(&mut v[at(1)..][..across], s1, s2, |b, c| b + c);
                combine(&mut v[at(2)..][..across], s2, s1, |c, b| c - b);
                combine(&mut v[at(3)..][..across], s1, s3, |b, d| b - d);
            }
        }
    }
}

/// dst[n] = f(a[n], b[n]) over the shortest of the three: zipped slices, which the
/// compiler vectorises (indexed loops kept their bounds checks and stayed scalar).
fn combine<T: Float>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

fn add_into<T: Float>(dst: &mut [T], a: &[T]) {
    for (d, &x) in dst.iter_mut().zip(a) {
        *d += x;
    }
}

fn sub_from<T: Float>(dst: &mut [T], a: &[T]) {
    for (d, &x) in dst.iter_mut().zip(a) {
        *d -= x;
    }
}

/// y = Aᵀ·M·A + bias for each output block, Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]], written
/// into the blocks' place in the image's output (cropped at an odd edge), ReLU when `relu`.
///
/// # Safety
/// The output rows of `rows` in `out` (image `image`) must be this caller's alone.
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output<T: Float>(
    g: &Geometry,
    m: &[T],
    rows: std::ops::Range<usize>,
    bias: &[T],
    relu: bool,
    out: SharedOutput<T>,
    image: usize,
) {
    let (across, _) = blocks(g);
    let count = rows.len() * across;
    let plane = g.out_plane();
    // Aᵀ·M as two rows of four runs, then the four outputs of each block as runs, each run
    // over all block rows at once (a channel's blocks are contiguous in m): runs of one
    // block row (7-28 blocks in ResNet-50) left the loops mostly in their remainders.
    let mut scratch = vec![T::ZERO; 12 * count];
    let finish = |v: T| if relu && v < T::ZERO { T::ZERO } else { v };
    for (co, &b) in bias.iter().enumerate() {
        let mm: [&[T]; POSITIONS] =
            std::array::from_fn(|p| &m[(p * g.c_out + co) * count..][..count]);
        let (rows01, outputs) = scratch.split_at_mut(8 * count);
        let mut runs = rows01.chunks_exact_mut(count);
        let am: [&mut [T]; 8] = std::array::from_fn(|_| runs.next().unwrap());
        for c in 0..4 {
            let (m0, m1, m2, m3) = (mm[c], mm[4 + c], mm[8 + c], mm[12 + c]);
            combine(am[c], m0, m1, |a, b| a + b);
            add_into(am[c], m2);
            combine(am[4 + c], m1, m2, |b, c| b - c);
            sub_from(am[4 + c], m3);
        }
        let mut runs = outputs.chunks_exact_mut(count);
        let mut y: [&mut [T]; 4] = std::array::from_fn(|_| runs.next().unwrap());
        for row in 0..2 {
            let [s0, s1, s2, s3] = [0, 1, 2, 3].map(|c| &am[4 * row + c][..]);
            let (left, right) = y.split_at_mut(2 * row + 1);
            let (y_left, y_right) = (&mut left[2 * row], &mut right[0]);
            combine(y_left, s0, s1, |a, c| a + c + b);
            add_into(y_left, s2);
            combine(y_right, s1, s2, |a, c| a - c + b);
            sub_from(y_right, s3);
        }
        for (r, by) in rows.clone().enumerate() {
            let y0 = 2 * by;
            for row in 0..2.min(g.out_h - y0) {
                // SAFETY: an output row of this block row, channel co: the caller's alone.
                let dst = unsafe {
                    out.uninit(
                        (image * g.c_out + co) * plane + (y0 + row) * g.out_w,
                        g.out_w,
                    )
                };
                // Even output columns from the blocks' left outputs, odd from their right;
                // every value of the row is written (an odd row's last from a left one).
                let left = &y[2 * row][r * across..][..across];
                let right = &y[2 * row + 1][r * across..][..across];
                let mut pairs = dst.chunks_exact_mut(2);
                for ((pair, &l), &r) in pairs.by_ref().zip(left).zip(right) {
                    pair[0].write(finish(l));
                    pair[1].write(finish(r));
                }
                if let [last] = pairs.into_remainder() {
                    last.write(finish(left[across - 1]));
                }
            }
        }
    }
}

/// The convolution of a 3x3, stride-1 [`Geometry`] ([`applies`]) with the filters `u` of
/// [`transform_filters`], bias added and ReLU applied when `relu`: tasks of block rows in
/// parallel, each transforming its input, running the 16 GEMMs single-threaded and
/// transforming the products into its rows of the output.
pub(super) fn forward<T: Float>(g: &Geometry, x: &[T], u: &[T], bias: &[T], relu: bool) -> Vec<T> {
    assert_eq!(u.len(), g.c_out * POSITIONS * g.c_in);
    let (across, _) = blocks(g);
    let in_size = g.c_in * g.in_plane();
    // Every value is written once, by the output transform (no zero-fill first).
    let len = g.batch * g.c_out * g.out_plane();
    let mut y: Vec<T> = Vec::with_capacity(len);
    let out = SharedOutput {
        ptr: y.as_mut_ptr(),
        len,
    };
    let block_rows = block_rows(g, rayon::current_num_threads());
    let tasks: Vec<_> = (0..g.batch)
        .flat_map(|b| block_rows.iter().map(move |rows| (b, rows.clone())))
        .collect();
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, (b, rows)| {
            let count = rows.len() * across;
            // Both written in full before they are read: the input transform writes v, the
            // GEMMs (without accumulation) m.
            with_buffer(POSITIONS * g.c_in * count, |v| {
                with_buffer(POSITIONS * g.c_out * count, |m| {
                    transform_input(g, &x[b * in_size..][..in_size], rows.clone(), v, scratch);

                    for p in 0..POSITIONS {
                        let m_view = View::row_major(p * g.c_out * count, count);
                        let u_view = View {
                            offset: p * g.c_in,
                            rs: POSITIONS * g.c_in,
                            cs: 1,
                        };
                        let v_view = View::row_major(p * g.c_in * count, count);
                        assert!(m_view.last(g.c_out, count) < m.len());
                        // SAFETY: `m` is this task's own buffer and the assert bounds the view in it.
                        unsafe {
                            gemm_unchecked(
                                (g.c_out, count, g.c_in),
                                m.as_mut_ptr(),
                                m_view,
                                false,
                                u,
                                u_view,
                                v,
                                v_view,
                                1,
                            )
                        };
                    }
                    // SAFETY: block rows of one image cover disjoint output rows, images disjoint
                    // planes.
                    unsafe { transform_output(g, m, rows, bias, relu, out, b) };
                })
            })
        });
    // SAFETY: the block rows cover every output row of every image, and the output
    // transform writes every value of each of them.
    unsafe { y.set_len(len) };
    y
}

#[cfg(test)]
mod tests {
    use super::super::im2col_forward;
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn geometry(
        batch: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        pad: [usize; 4],
    ) -> Geometry {
        let [top, bottom, left, right] = pad;
        Geometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            k_h: 3,
            k_w: 3,
            stride: 1,
            top,
            left,
            out_h: h + top + bottom - 2,
            out_w: w + left + right - 2,
        }
    }

    #[test]
    fn matches_the_im2col_convolution() {
        // Even and odd output sizes, no / asymmetric / wide padding, outputs of one pixel,
        // more output than input channels and the reverse, several block rows per image.
        let cases = [
            geometry(2, 3, 4, 9, 8, [1, 1, 1, 1]),
            geometry(1, 5, 2, 7, 7, [0, 0, 0, 0]),
            geometry(3, 2, 3, 6, 5, [0, 1, 1, 0]),
            geometry(1, 4, 4, 3, 3, [0, 0, 0, 0]),
            geometry(2, 2, 5, 4, 6, [2, 2, 2, 2]),
            geometry(1, 3, 1, 1, 1, [1, 1, 1, 1]),
            geometry(1, 300, 8, 33, 65, [1, 1, 1, 1]),
        ];
        for (i, g) in cases.iter().enumerate() {
            let x = values(g.batch * g.c_in * g.in_plane(), i as u64);
            let w = values(g.c_out * g.c_in * 9, 100 + i as u64);
            let bias = values(g.c_out, 200 + i as u64);
            for relu in [false, true] {
                let expected = im2col_forward(
                    g,
                    &x,
                    (&w, View::row_major(0, g.patch())),
                    &bias,
                    None,
                    relu,
                );
                let u = transform_filters(g.c_out, g.c_in, &w);
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let ours = pool.install(|| forward(g, &x, &u, &bias, relu));
                    assert_eq!(ours.len(), expected.len());
                    let worst = ours
                        .iter()
                        .zip(&expected)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(worst < 1e-12, "case {i}, {threads} threads: {worst}");
                }
            }
            // A ReLU that zeroes some outputs and keeps others (where there are a few).
            let y = forward(g, &x, &transform_filters(g.c_out, g.c_in, &w), &bias, true);
            let zeros = y.iter().filter(|&&v| v == 0.0).count();
            assert!(y.len() < 20 || (zeros > 0 && zeros < y.len()), "case {i}");
        }
    }

    #[test]
    fn several_block_rows_per_image() {
        // 300 channels over 33 block columns: 158 400 values a block row, so six of them
        // per task and three tasks for the 17 block rows on one thread.
        let g = geometry(1, 300, 8, 33, 65, [1, 1, 1, 1]);
        assert_eq!(block_rows(&g, 1), vec![0..6, 6..12, 12..17]);
        assert_eq!(block_rows(&g, 2).len(), 4);
    }
}
