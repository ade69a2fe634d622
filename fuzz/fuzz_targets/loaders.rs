//! Arbitrary bytes as a data file, through every loader that reads one: the runtime's IDX
//! and CSV parsers (gzip included), the checker's IDX, CSV and safetensors inspectors,
//! NumPy's .npy and .npz readers (headers, samples, labels, every member of an archive), the
//! image decoder (`kd_datafiles::images::decode`, RGB and gray, resized or not), the
//! Parquet and Arrow table reader (schema, labels, image and text cells), and
//! candle's safetensors loading as `load_weights` uses it. Errors are expected; a panic, an
//! overflow, or an allocation past libFuzzer's limit is a bug.

#![no_main]

use std::path::Path;

use candle_core::safetensors::{Load, SliceSafetensors};
use candle_core::{DType, Device};
use kd_compiler::fuzzing::{
    csv_bytes, idx_images_bytes, idx_labels_bytes, weights_bytes, LabelColumn,
};
use kd_datafiles::images::{self, Color, Decoding};
use kd_datafiles::table::{self, Format, Input, Kind};
use kd_datafiles::{npy, npz};
use kd_plan::{Layer, LayerSpec, Span};
use kd_runtime::data::{csv::parse_csv, decode_text, idx};
use libfuzzer_sys::fuzz_target;

/// arrow-rs panics on some malformed tables; `kd_datafiles::table` catches those and
/// reports the file. Such panics are let through here; any other still aborts.
fn let_arrow_panics_through() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let upstream = info.location().is_some_and(|l| {
                let file = l.file();
                file.contains("/parquet-") || file.contains("/arrow-")
            });
            if !upstream {
                abort(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_arrow_panics_through();
    let path = Path::new("fuzz-input");
    // The last byte picks the CSV options, so one input explores header and label choices.
    let options = data.last().copied().unwrap_or(0);
    let header = options & 1 == 1;
    let delimiter = if options & 2 == 0 { ',' } else { '\t' };
    let label = i64::from(options >> 2) % 8 - 4;

    if let Ok(array) = idx::decode_idx(data, path) {
        let _ = idx::idx_labels(&array, path);
    }
    if let Ok(text) = decode_text(data.to_vec(), path) {
        let column = usize::try_from(label.max(0)).unwrap_or(0);
        let _ = parse_csv(&text, path, header, delimiter, column);
    }
    let _ = npy::samples(data);
    let _ = npy::labels(data);
    if let Ok(header) = npy::read_header_from(&mut &data[..]) {
        let _ = header.check_len(data.len() as u64);
    }
    if let Ok(mut archive) = npz::open_bytes(data) {
        for key in npz::keys(&archive) {
            let _ = npz::header(&mut archive, &key);
            if let Ok(member) = npz::member(&mut archive, &key) {
                let _ = npy::samples(&member);
                let _ = npy::labels(&member);
            }
        }
    }
    for decoding in [
        Decoding { color: Color::Rgb, height: 4, width: 4, resize: Some(6) },
        Decoding { color: Color::Gray, height: 2, width: 2, resize: None },
    ] {
        let _ = images::decode(data, &decoding);
    }
    for format in [Format::Parquet, Format::Arrow] {
        let _ = table::labels_of(Input::from_slice(data), format, "label", None);
        for (column, kind) in [("image", Kind::Image), ("text", Kind::Text)] {
            let _ = table::cells_of(Input::from_slice(data), format, column, kind, None, |_, _| {
                Ok(())
            });
        }
    }
    let _ = idx_images_bytes(data);
    let _ = idx_labels_bytes(data);
    let _ = csv_bytes(data, header, delimiter, &LabelColumn::Index(label));
    let _ = csv_bytes(data, true, delimiter, &LabelColumn::Name("label".into()));

    let layer = LayerSpec {
        name: "fc".into(),
        layer: Layer::Linear { out: 2, bias: true },
        input: vec![3],
        output: vec![2],
        params: 8,
        flops: 12,
        span: Span::default(),
    };
    let _ = weights_bytes(data, std::slice::from_ref(&layer));
    if let Ok(file) = SliceSafetensors::new(data) {
        for (_, view) in file.tensors() {
            if let Ok(tensor) = view.load(&Device::Cpu) {
                if matches!(
                    tensor.dtype(),
                    DType::U8
                        | DType::U32
                        | DType::I16
                        | DType::I32
                        | DType::I64
                        | DType::BF16
                        | DType::F16
                        | DType::F32
                        | DType::F64
                ) {
                    let _ = tensor.to_dtype(DType::F32);
                }
            }
        }
    }
});
