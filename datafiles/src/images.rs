//! Image data sets: a folder with one sub-folder per class (torchvision's ImageFolder
//! layout), or a CSV/JSON Lines list of `path,label` rows. PNG, BMP, JPEG and WebP, decoded
//! by the `image` crate.
//!
//! The checker reads each file's header only ([`header`]: format and dimensions, with no
//! pixel decoded); the runtime decodes every image once ([`decode`]), converts it to the
//! declared colour (RGB or gray; 16-bit, palette, CMYK and alpha images converted), resizes
//! and centre-crops it when asked, and keeps it as bytes, `[C, H, W]`.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageFormat, ImageReader, Limits, RgbImage};
use jpeg_decoder::PixelFormat;
use kd_textdata::{Format, Layout, ReadError};

use crate::Reason;

/// The file name endings read as images (case does not matter); other files in a class
/// folder (a README, `.DS_Store`) are skipped, as ImageFolder skips them.
pub const EXTENSIONS: &[&str] = &["png", "bmp", "jpg", "jpeg", "webp"];

/// Names how pixels are decoded: it goes into the hash of every decoded image source, so
/// a cache (decoded pixels, a teacher's outputs) made by another decoder is not reused.
/// Raise it whenever a decoder or a conversion changes its output.
pub const DECODER: &str = "kdc images 2 (jpeg-decoder for YCbCr JPEGs)";

/// The largest width or height kdc decodes: a header claiming more is refused before any
/// pixel is allocated.
pub const MAX_SIDE: u32 = 1 << 14;

/// One sample: an image file and its raw label (its folder's name, or the list's label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub label: String,
}

/// The colour models see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Rgb,
    Gray,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Rgb => 3,
            Color::Gray => 1,
        }
    }
}

/// How every image becomes a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoding {
    pub color: Color,
    /// The sample's height and width.
    pub height: u32,
    pub width: u32,
    /// Scale the shorter side to this (bilinear, antialiased when shrinking), then crop the
    /// centre to `height` x `width`; `None`: the image must be that size already.
    pub resize: Option<u32>,
}

fn fail(path: &Path, reason: impl Into<String>) -> ReadError {
    ReadError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// The samples of `path`: a folder of class folders, or a list file (`.csv`, `.tsv`,
/// `.jsonl`, `.json`) whose `path_field` and `label_field` give each image (relative to the
/// list's folder) and its label. Folders and files in name order, list rows in file order.
pub fn entries(path: &Path, path_field: &str, label_field: &str) -> Result<Vec<Entry>, ReadError> {
    if path.is_dir() {
        return folder_entries(path);
    }
    let Some(format) = Format::infer(path).filter(|f| *f != Format::Folders) else {
        return Err(fail(
            path,
            "it is neither a folder of class folders nor a .csv, .tsv, .jsonl or .json list",
        ));
    };
    let layout = Layout {
        format,
        text_field: path_field.to_string(),
        label_field: label_field.to_string(),
        extension: None,
        skip_headers: false,
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let records = kd_textdata::read(path, &layout, true)?;
    if records.is_empty() {
        return Err(fail(path, "it lists no images"));
    }
    Ok(records
        .into_iter()
        .map(|r| Entry {
            path: base.join(r.text.trim()),
            label: r.label,
        })
        .collect())
}

/// A folder's entries (name, path, whether a folder), hidden ones left out, by name.
type Listing = Vec<(String, PathBuf, bool)>;

fn list(dir: &Path) -> Result<Listing, ReadError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e.to_string()))? {
        let entry = entry.map_err(|e| fail(dir, e.to_string()))?;
        if hidden(&entry.file_name()) {
            continue;
        }
        let is_dir = entry.path().is_dir();
        found.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
            is_dir,
        ));
    }
    found.sort();
    Ok(found)
}

fn folder_entries(root: &Path) -> Result<Vec<Entry>, ReadError> {
    let classes: Vec<_> = list(root)?.into_iter().filter(|(_, _, d)| *d).collect();
    if classes.is_empty() {
        return Err(fail(
            root,
            "it holds no class folders: images go in one sub-folder per class (ImageFolder's layout), or in a .csv/.jsonl list",
        ));
    }
    let mut entries = Vec::new();
    for (label, dir, _) in classes {
        let before = entries.len();
        class_files(&dir, &mut entries, &label)?;
        if entries.len() == before {
            return Err(fail(
                &dir,
                format!(
                    "the class folder holds no images ({})",
                    EXTENSIONS.join(", ")
                ),
            ));
        }
    }
    Ok(entries)
}

/// The images of one class folder and of every folder inside it, in ImageFolder's order:
/// folders by path (a folder's own files before its sub-folders', which sort after it),
/// files by name within each. Links are followed; one that leads to a folder already read
/// (a loop, or a second way into the same folder) is refused, as walking it would repeat
/// images or never end.
fn class_files(class: &Path, entries: &mut Vec<Entry>, label: &str) -> Result<(), ReadError> {
    // (path under the class folder, with `/` between names, as os.walk's roots sort; the
    // folder)
    let mut folders = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![(String::new(), class.to_path_buf())];
    while let Some((name, dir)) = pending.pop() {
        let real = std::fs::canonicalize(&dir).map_err(|e| fail(&dir, e.to_string()))?;
        if !seen.insert(real.clone()) {
            return Err(fail(
                &dir,
                format!(
                    "it leads to `{}`, a folder already read in this class (a link loop, or two links to one folder)",
                    real.display()
                ),
            ));
        }
        let found = list(&dir)?;
        for (child, path, is_dir) in &found {
            if *is_dir {
                let nested = if name.is_empty() {
                    child.clone()
                } else {
                    format!("{name}/{child}")
                };
                pending.push((nested, path.clone()));
            }
        }
        folders.push((name, found));
    }
    folders.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, found) in folders {
        for (_, file, is_dir) in found {
            if !is_dir && is_image(&file) {
                entries.push(Entry {
                    path: file,
                    label: label.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// An image file's width and height, from its header: no pixel is decoded. Refuses what
/// is not PNG, BMP, JPEG or WebP, and sides past [`MAX_SIDE`].
pub fn header(path: &Path) -> Result<(u32, u32), Reason> {
    let reader = open(path)?;
    let (width, height) = reader.into_dimensions().map_err(|e| image_reason(&e))?;
    check_sides(width, height)?;
    Ok((width, height))
}

/// [`header`] of an image held in memory (a table's cell).
pub fn header_bytes(bytes: &[u8]) -> Result<(u32, u32), Reason> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("it is not a PNG, BMP, JPEG or WebP image".into());
    }
    let (width, height) = reader.into_dimensions().map_err(|e| image_reason(&e))?;
    check_sides(width, height)?;
    Ok((width, height))
}

/// [`header`] of every entry, read in parallel; the first failure in the entries' order
/// (its index and reason) when any fails.
pub fn headers(entries: &[Entry]) -> Result<Vec<(u32, u32)>, (usize, Reason)> {
    use rayon::prelude::*;
    let found: Vec<Result<(u32, u32), Reason>> =
        entries.par_iter().map(|e| header(&e.path)).collect();
    found
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.map_err(|reason| (i, reason)))
        .collect()
}

fn open(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, Reason> {
    let reader = ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("it is not a PNG, BMP, JPEG or WebP image".into());
    }
    Ok(reader)
}

fn check_sides(width: u32, height: u32) -> Result<(), Reason> {
    if width == 0 || height == 0 {
        return Err(format!(
            "it is {width} x {height} pixels: an image without pixels"
        ));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "it claims {width} x {height} pixels, more than the {MAX_SIDE} a side kdc decodes"
        ));
    }
    Ok(())
}

fn image_reason(e: &image::ImageError) -> Reason {
    format!("it cannot be decoded: {e}")
}

/// Decodes an image file's bytes into `[C, H, W]` bytes as `decoding` says.
pub fn decode(bytes: &[u8], decoding: &Decoding) -> Result<Vec<u8>, Reason> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("it is not a PNG, BMP, JPEG or WebP image".into());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // 8-bit RGBA at the largest side; a larger buffer (16-bit at that size) is refused.
    limits.max_alloc = Some(u64::from(MAX_SIDE) * u64::from(MAX_SIDE) * 4);
    reader.limits(limits);
    let jpeg = match reader.format() {
        Some(ImageFormat::Jpeg) => jpeg(bytes)?,
        _ => None,
    };
    let image = match jpeg {
        Some(image) => image,
        None => reader.decode().map_err(|e| image_reason(&e))?,
    };
    check_sides(image.width(), image.height())?;
    let image = fit(image, decoding).map_err(|r| r.to_string())?;
    Ok(match decoding.color {
        Color::Gray => image.to_luma8().into_raw(),
        Color::Rgb => {
            let rgb = image.to_rgb8();
            let plane = rgb.width() as usize * rgb.height() as usize;
            let mut chw = vec![0u8; plane * 3];
            for (p, pixel) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    chw[c * plane + p] = pixel.0[c];
                }
            }
            chw
        }
    })
}

/// A YCbCr, RGB or gray JPEG through `jpeg-decoder`, whose chroma upsampling is libjpeg's,
/// Pillow's decoder. Against Pillow 12.3 on chroma-subsampled images (4:2:0, noise, widths
/// 24 to 35) it was within 3 levels, where zune-jpeg (the image crate's decoder) was up to
/// 19 off, mostly near the right and bottom edges. CMYK and 12-bit JPEGs give `None`: the
/// image crate decodes those.
fn jpeg(bytes: &[u8]) -> Result<Option<DynamicImage>, Reason> {
    let fault = |e: jpeg_decoder::Error| match e {
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it cannot be decoded: its JPEG data ends early (the file is cut short)".to_string()
        }
        e => format!("it cannot be decoded: {e}"),
    };
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    // What jpeg-decoder does not support (arithmetic coding, odd sampling), the image
    // crate may.
    match decoder.read_info() {
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        other => other.map_err(fault)?,
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_sides(width, height)?;
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8) {
        return Ok(None);
    }
    let pixels = match decoder.decode() {
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        other => other.map_err(fault)?,
    };
    let image = match info.pixel_format {
        PixelFormat::RGB24 => RgbImage::from_raw(width, height, pixels).map(DynamicImage::from),
        _ => GrayImage::from_raw(width, height, pixels).map(DynamicImage::from),
    };
    image
        .map(Some)
        .ok_or_else(|| "it cannot be decoded: fewer pixels than its size".into())
}

/// The image at the sample's size: resized and centre-cropped, or checked.
fn fit(image: DynamicImage, d: &Decoding) -> Result<DynamicImage, String> {
    let (w, h) = (image.width(), image.height());
    let Some(short) = d.resize else {
        if (w, h) != (d.width, d.height) {
            return Err(format!(
                "it is {w} x {h} pixels but samples are {} x {}: give `resize` to scale and crop images of other sizes",
                d.width, d.height
            ));
        }
        return Ok(image);
    };
    if short < d.height.max(d.width) || short > MAX_SIDE {
        return Err(format!(
            "`resize: {short}` must be at least the {} x {} crop and at most {MAX_SIDE}",
            d.width, d.height
        ));
    }
    // The shorter side to `short`, the other in proportion (rounded, at least the crop),
    // no longer than MAX_SIDE: a long, thin image would otherwise resize into gigabytes.
    let (nw, nh) = if w <= h {
        let nh = (u64::from(h) * u64::from(short) + u64::from(w) / 2) / u64::from(w);
        (short, u32::try_from(nh).unwrap_or(u32::MAX).max(d.height))
    } else {
        let nw = (u64::from(w) * u64::from(short) + u64::from(h) / 2) / u64::from(h);
        (u32::try_from(nw).unwrap_or(u32::MAX).max(d.width), short)
    };
    if nw > MAX_SIDE || nh > MAX_SIDE {
        return Err(format!(
            "it is {w} x {h} pixels: with its shorter side at {short}, its longer one would be {}, more than {MAX_SIDE}",
            nw.max(nh)
        ));
    }
    let resized = if (nw, nh) == (w, h) {
        image
    } else {
        image.resize_exact(nw, nh, FilterType::Triangle)
    };
    let (x, y) = ((nw - d.width) / 2, (nh - d.height) / 2);
    Ok(resized.crop_imm(x, y, d.width, d.height))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A class folder with a link back to itself is refused, not walked forever.
    #[cfg(unix)]
    #[test]
    fn a_link_loop_in_a_class_folder_is_refused() {
        let root = std::env::temp_dir().join(format!("kdc-image-loop-{}", std::process::id()));
        let class = root.join("cat");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join("a.png"), b"").unwrap();
        std::os::unix::fs::symlink(&class, class.join("again")).unwrap();
        let err = entries(&root, "path", "label").unwrap_err();
        assert!(err.reason.contains("link loop"), "{}", err.reason);
        assert!(err.path.ends_with("cat/again"), "{}", err.path.display());
        std::fs::remove_file(class.join("again")).unwrap();
        let found = entries(&root, "path", "label").unwrap();
        assert_eq!(found.len(), 1);
        std::fs::remove_dir_all(&root).ok();
    }
}
