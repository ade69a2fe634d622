//! Per-sample image augmentation loops (the runtime draws the random parameters, in
//! order, and runs samples in parallel): here so that every build profile optimises them.

/// Rotates one `[channels, h, w]` sample around the image centre by `angle` radians
/// (counter-clockwise), bilinear, neighbours outside the image taking their channel's
/// `fill` value; `scratch` holds a sample's worth of values.
pub fn rotate(
    sample: &mut [f32],
    scratch: &mut [f32],
    (channels, h, w): (usize, usize, usize),
    angle: f64,
    fill: &[f32],
) {
    if angle == 0.0 {
        return;
    }
    scratch.copy_from_slice(sample);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let plane_len = h * w;
    // Where each pixel of a row reads from, the same in every channel: computed once per
    // row, not once per channel (a 3 x 32 x 32 sample: 21 us before).
    let mut y0 = vec![0isize; w];
    let mut x0 = vec![0isize; w];
    let mut fy = vec![0f64; w];
    let mut fx = vec![0f64; w];
    for i in 0..h {
        crate::vectorised(|| {
            for j in 0..w {
                let (y, x) = (i as f64 - cy, j as f64 - cx);
                // The inverse rotation maps each output pixel to its source.
                let sy = cos * y - sin * x + cy;
                let sx = sin * y + cos * x + cx;
                let (ty, tx) = (floor(sy), floor(sx));
                (y0[j], x0[j], fy[j], fx[j]) = (ty, tx, sy - ty as f64, sx - tx as f64);
            }
        });
        for c in 0..channels {
            let plane = &scratch[c * plane_len..(c + 1) * plane_len];
            let value = f64::from(fill.get(c).copied().unwrap_or(0.0));
            let at = |y: isize, x: isize| -> f64 {
                if y >= 0 && (y as usize) < h && x >= 0 && (x as usize) < w {
                    f64::from(plane[y as usize * w + x as usize])
                } else {
                    value
                }
            };
            let out = &mut sample[c * plane_len + i * w..c * plane_len + (i + 1) * w];
            for (j, o) in out.iter_mut().enumerate() {
                let (y0, x0, fy, fx) = (y0[j], x0[j], fy[j], fx[j]);
                // Most pixels read four neighbours inside the image: no bounds to test.
                let corners =
                    if y0 >= 0 && x0 >= 0 && ((y0 + 1) as usize) < h && ((x0 + 1) as usize) < w {
                        let at = y0 as usize * w + x0 as usize;
                        let v = |k: usize| f64::from(plane[k]);
                        (v(at), v(at + 1), v(at + w), v(at + w + 1))
                    } else {
                        (
                            at(y0, x0),
                            at(y0, x0 + 1),
                            at(y0 + 1, x0),
                            at(y0 + 1, x0 + 1),
                        )
                    };
                let top = corners.0 * (1.0 - fx) + corners.1 * fx;
                let bottom = corners.2 * (1.0 - fx) + corners.3 * fx;
                *o = (top * (1.0 - fy) + bottom * fy) as f32;
            }
        }
    }
}

/// `x.floor()` as an integer, for `|x|` far below `isize::MAX` (pixel coordinates): the
/// baseline x86-64 target has no rounding instruction, so `f64::floor` is a call into
/// libm, twice per pixel of a rotation; truncation is one instruction.
#[inline(always)]
fn floor(x: f64) -> isize {
    let t = x as isize;
    if (t as f64) > x {
        t - 1
    } else {
        t
    }
}
