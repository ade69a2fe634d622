//! The .npy reader against hand-made files: both orders, both byte orders, labels of
//! several widths, and headers whose claims do not fit the file.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use kd_datafiles::npy::{fortran_to_c, header, labels, samples, Values};

fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header);
    out.extend(data);
    out
}

#[test]
fn headers_and_values() {
    let file = npy("|u1", false, "(2, 3)", &[1, 2, 3, 4, 5, 6]);
    let (header, values) = samples(&file).unwrap();
    assert_eq!(header.shape, vec![2, 3]);
    assert_eq!(values, Values::U8(vec![1, 2, 3, 4, 5, 6]));
    // Column-major: the same 2 x 3 array stored by columns.
    let file = npy("|u1", true, "(2, 3)", &[1, 4, 2, 5, 3, 6]);
    assert_eq!(
        samples(&file).unwrap().1,
        Values::U8(vec![1, 2, 3, 4, 5, 6])
    );
    let big: Vec<u8> = [1.5f64, -2.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let file = npy(">f8", false, "(2, 1)", &big);
    assert_eq!(samples(&file).unwrap().1, Values::F32(vec![1.5, -2.0]));
    let labels_file = npy("<i2", false, "(3,)", &[1, 0, 2, 0, 9, 0]);
    assert_eq!(labels(&labels_file).unwrap(), vec![1, 2, 9]);
    let negative = npy("<i1", false, "(2,)", &[1, 0xff]);
    assert!(labels(&negative).unwrap_err().contains("-1"));
}

#[test]
fn lying_headers_are_refused_before_allocating() {
    let huge = npy("<f4", false, "(1000000000000, 1000000)", &[0; 8]);
    assert!(samples(&huge).unwrap_err().contains("claims"));
    let overflow = npy("<f4", false, "(18446744073709551615, 2)", &[]);
    assert!(samples(&overflow).unwrap_err().contains("address"));
    assert!(header(b"\x93NUMPY\x01\x00\xff\xff").is_err());
    assert!(header(b"not numpy at all").is_err());
}

#[test]
fn fortran_order_in_three_axes() {
    // shape (2, 2, 3): C index ((i * 2) + j) * 3 + k holds 100 i + 10 j + k.
    let shape = [2, 2, 3];
    let mut column_major = vec![0u32; 12];
    for i in 0..2 {
        for j in 0..2 {
            for k in 0..3 {
                column_major[i + 2 * (j + 2 * k)] = (100 * i + 10 * j + k) as u32;
            }
        }
    }
    let c = fortran_to_c(&column_major, &shape);
    let expected: Vec<u32> = (0..2)
        .flat_map(|i| (0..2).flat_map(move |j| (0..3).map(move |k| (100 * i + 10 * j + k) as u32)))
        .collect();
    assert_eq!(c, expected);
}
