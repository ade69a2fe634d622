//! CSV files of numeric features and one integer label column.

use std::path::Path;

use crate::error::{Result, RuntimeError};

/// The rows of a CSV file: features row after row, and one label per row.
#[derive(Debug)]
pub struct CsvTable {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub columns: usize,
}

fn bad(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::DataFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parses CSV text; every row must have the same number of fields.
pub fn parse_csv(
    text: &str,
    path: &Path,
    header: bool,
    delimiter: char,
    label_column: usize,
) -> Result<CsvTable> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut fields_per_row: Option<usize> = None;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .skip(usize::from(header));
    for (line_index, line) in rows {
        let line_no = line_index + 1;
        let mut fields = 0usize;
        let mut label = None;
        for (column, field) in line.split(delimiter).enumerate() {
            fields += 1;
            let field = field.trim();
            if column == label_column {
                label = Some(parse_label(field).ok_or_else(|| {
                    bad(
                        path,
                        format!("line {line_no}: the label `{field}` is not a class id (a non-negative integer)"),
                    )
                })?);
            } else {
                let value: f32 = field.parse().map_err(|_| {
                    bad(
                        path,
                        format!(
                            "line {line_no}, column {}: `{field}` is not a number",
                            column + 1
                        ),
                    )
                })?;
                // NaN, infinities and values past f32's range would only surface later as a
                // non-finite loss, far from the file that holds them.
                if !value.is_finite() {
                    return Err(bad(
                        path,
                        format!(
                            "line {line_no}, column {}: `{field}` is not a finite 32-bit number",
                            column + 1
                        ),
                    ));
                }
                features.push(value);
            }
        }
        match fields_per_row {
            None => fields_per_row = Some(fields),
            Some(expected) if expected != fields => {
                return Err(bad(
                    path,
                    format!("line {line_no} has {fields} fields, the first row has {expected}"),
                ))
            }
            Some(_) => {}
        }
        let label = label.ok_or_else(|| {
            bad(
                path,
                format!(
                    "line {line_no} has no column {} for the label ({fields} fields)",
                    label_column + 1
                ),
            )
        })?;
        labels.push(label);
    }
    let columns = fields_per_row.map_or(0, |f| f.saturating_sub(1));
    Ok(CsvTable {
        features,
        labels,
        columns,
    })
}

/// A class id: a non-negative integer, also written as `3.0`.
fn parse_label(field: &str) -> Option<u32> {
    if let Ok(value) = field.parse::<u32>() {
        return Some(value);
    }
    let value: f64 = field.parse().ok()?;
    (value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX)).then_some(value as u32)
}
