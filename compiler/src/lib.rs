//! kdc's compiler: `.kd` text to a checked program to a Plan.
//!
//! Each arrow is one public function: [`kd_grammar::parse`] (text to AST),
//! [`apply_overrides`] (AST to AST, for `--set`), [`check`] (AST to [`Checked`]),
//! [`lower`] (Checked to Plan) and [`optimize`] (Plan to Plan). [`compile`] runs them all.

mod check;
pub mod diagnostics;
pub mod explain;
mod inspect;
mod lower;
mod onnx;
mod overrides;
mod passes;
mod remembered;
pub mod render;
mod sweep;
pub mod vocabulary;
mod weights;

use std::path::Path;

pub use check::{check, Checked, CheckedStage, SourceFile, TypedExpr, TypedNode};
pub use diagnostics::{CheckError, KdError, OverrideError, SweepError};
pub use lower::lower;
pub use overrides::{apply_overrides, parse_overrides};
pub use passes::{
    cache_frozen_forwards, fold_constants, optimize, order_stages, prune, share_common,
};
/// For benchmarks: the next check reads every data file again (a fresh `kdc check`).
pub use remembered::forget_files;
pub use sweep::{expand_sweep, value_text, Expanded, Point};

use kd_plan::{Override, Plan, SweepConfig, SweepPlan};

/// Byte-level entry points to the checker's file inspectors, for the fuzz targets (`fuzz/`):
/// the same code `check` runs on a file, without writing one per input.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::inspect::{csv_bytes, idx_images_bytes, idx_labels_bytes, LabelColumn};
    pub use crate::weights::check_bytes as weights_bytes;
}

/// A compiled Plan and the warnings met on the way.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub plan: Plan,
    pub warnings: Vec<KdError>,
}

/// Source text to an optimised Plan, every stage in one call.
pub fn compile(
    source: &str,
    file: &Path,
    overrides: &[Override],
) -> Result<Compiled, Vec<KdError>> {
    let program = kd_grammar::parse(source).map_err(|e| vec![KdError::from(e)])?;
    let program = apply_overrides(program, overrides)
        .map_err(|es| es.into_iter().map(KdError::from).collect::<Vec<_>>())?;
    let source_file = source_file(file);
    let checked = check(&program, &source_file, overrides)?;
    let warnings = checked.warnings.clone();
    Ok(Compiled {
        plan: optimize(lower(&checked)),
        warnings,
    })
}

/// A compiled sweep and the warnings met on the way (each once).
#[derive(Debug, Clone)]
pub struct CompiledSweep {
    pub sweep: SweepPlan,
    pub warnings: Vec<KdError>,
}

/// Source text to the Plans of sweep `name`'s configurations: the file (with `overrides`)
/// is checked as a whole, then each configuration, each recording its values as
/// overrides after the command line's.
pub fn compile_sweep(
    source: &str,
    file: &Path,
    overrides: &[Override],
    name: &str,
) -> Result<CompiledSweep, Vec<KdError>> {
    let program = kd_grammar::parse(source).map_err(|e| vec![KdError::from(e)])?;
    let program = apply_overrides(program, overrides)
        .map_err(|es| es.into_iter().map(KdError::from).collect::<Vec<_>>())?;
    let source_file = source_file(file);
    // The file as written checks first: its problems are reported once, as a file's.
    let mut warnings = check(&program, &source_file, overrides)?.warnings;
    let expanded = expand_sweep(&program, name)
        .map_err(|es| es.into_iter().map(KdError::from).collect::<Vec<_>>())?;
    let mut errors: Vec<KdError> = Vec::new();
    let mut configs = Vec::new();
    for point in expanded.points {
        let mut recorded = overrides.to_vec();
        recorded.extend(point.values.iter().cloned());
        match check(&point.program, &source_file, &recorded) {
            Ok(checked) => {
                for w in &checked.warnings {
                    if !warnings.contains(w) {
                        warnings.push(w.clone());
                    }
                }
                configs.push(SweepConfig {
                    name: point.name,
                    values: point.values,
                    plan: optimize(lower(&checked)),
                });
            }
            Err(es) => {
                for e in es.into_iter().filter(KdError::is_error) {
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CompiledSweep {
        sweep: SweepPlan {
            name: expanded.name,
            search: expanded.search,
            select: expanded.select,
            configs,
        },
        warnings,
    })
}

/// Where a file's relative paths resolve: its folder, made absolute.
fn source_file(file: &Path) -> SourceFile {
    let base_dir = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let base_dir = std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    SourceFile {
        path: file.to_path_buf(),
        base_dir,
    }
}
