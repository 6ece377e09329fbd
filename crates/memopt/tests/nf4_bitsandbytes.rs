//! NF4 against bitsandbytes 0.50.2 on the CPU, byte for byte: packed codes, block maxima, double-quantized maxima
//! (codes, offset, second-level maxima), the dynamic map, and the dequantized weights. The fixture and the
//! script that made it: tests/fixtures/nf4.safetensors, scripts/make_nf4_fixture.py.

use llmtrain_memopt::nf4::{BlockScales, NF4_CODE, Nf4Tensor, dynamic_map};
use safetensors::SafeTensors;

const CASES: [&str; 4] = ["normal", "codes_and_midpoints", "student_t", "tail_zero_block_outlier"];

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Self {
        Self(std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nf4.safetensors")).unwrap())
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        SafeTensors::deserialize(&self.0).unwrap().tensor(name).unwrap().data().to_vec()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.bytes(name).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn code_tables_are_bitsandbytes_own() {
    let f = Fixture::load();
    assert_eq!(bits(&NF4_CODE), bits(&f.f32s("nf4_code")));
    assert_eq!(bits(&dynamic_map()), bits(&f.f32s("dynamic_code")));
}

#[test]
fn quantize_and_dequantize_match_bitsandbytes_byte_for_byte() {
    let f = Fixture::load();
    for case in CASES {
        let input = f.f32s(&format!("{case}.input"));
        let plain = Nf4Tensor::quantize(&input, false);
        assert_eq!(plain.packed, f.bytes(&format!("{case}.packed")), "{case}: packed codes");
        assert_eq!(bits(&plain.absmax()), bits(&f.f32s(&format!("{case}.absmax"))), "{case}: absmax");
        assert_eq!(bits(&plain.dequantize()), bits(&f.f32s(&format!("{case}.dequantized"))), "{case}: dequantized");

        let double = Nf4Tensor::quantize(&input, true);
        assert_eq!(double.packed, plain.packed);
        let BlockScales::Double { codes, offset, absmax2 } = &double.scales else { panic!("double scales") };
        assert_eq!(offset.to_bits(), f.f32s(&format!("{case}.dq.offset"))[0].to_bits(), "{case}: offset");
        assert_eq!(bits(absmax2), bits(&f.f32s(&format!("{case}.dq.absmax_absmax"))), "{case}: second-level absmax");
        assert_eq!(codes, &f.bytes(&format!("{case}.dq.absmax_codes")), "{case}: absmax codes");
        assert_eq!(
            bits(&double.dequantize()),
            bits(&f.f32s(&format!("{case}.dq.dequantized"))),
            "{case}: dequantized through double quantization"
        );
    }
}

#[test]
fn double_quantization_stores_about_4_127_bits_per_weight() {
    // A 4096 x 4096 layer: 4 bits + 8 bits per 64 + 32 bits per 64·256 + the offset.
    let values: Vec<f32> = (0..4096u64 * 4096).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4).collect();
    let double = Nf4Tensor::quantize(&values, true);
    let plain = Nf4Tensor::quantize(&values, false);
    assert!((double.bits_per_value() - 4.127).abs() < 0.001, "{}", double.bits_per_value());
    assert!((plain.bits_per_value() - 4.5).abs() < 1e-9, "{}", plain.bits_per_value());
}
