//! The bench's own parts stay runnable: every training case's pipeline compiles with its
//! data written, every row of the layer table builds its model and times its layer
//! forward and backward (each augmentation, its op), without PyTorch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use kd_bench::layers::{layers, LayerFilter};
use kd_bench::{prepare, Case};

#[test]
fn every_case_compiles_with_its_data() {
    let work = std::env::temp_dir().join(format!("kdc-bench-test-{}", std::process::id()));
    for case in Case::ALL {
        if case == Case::BertTeacher && kd_bench::cases::minilm_folder().is_none() {
            continue; // scripts/fetch-data.sh minilm; tests/text.rs needs it too
        }
        let (dir, plan) =
            prepare(case, &work, "test", 1, &[]).unwrap_or_else(|e| panic!("{}: {e}", case.name()));
        assert!(
            plan.stages.iter().any(|s| s.name == case.stage()),
            "{}: no stage `{}`",
            case.name(),
            case.stage()
        );
        assert!(dir.join("data").is_dir());
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn every_row_of_the_layer_table_times_its_layer() {
    let filter = LayerFilter::new(&[]).unwrap();
    let no_torch = Err("not in this test".to_string());
    let report = layers(&filter, 1, 1, 2, &no_torch, &mut |_| {}).unwrap();
    assert!(report.rows.len() >= 40);
    for row in &report.rows {
        let positive = |v: &[f64]| v.len() == 1 && v[0].is_finite() && v[0] > 0.0;
        assert!(positive(&row.kdc_forward_us), "{}: forward", row.id);
        assert_eq!(
            positive(&row.kdc_backward_us),
            row.backward,
            "{}: backward",
            row.id
        );
    }
    let table = report.table();
    assert!(table.contains("| transformer_bert |") && table.contains("| swap_tokens |"));
    assert!(LayerFilter::new(&["no_such_row".to_string()]).is_err());
}
