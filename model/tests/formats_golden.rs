//! FP8 / MXFP4 encoders against the golden unit vectors (`testdata/golden/units`, copied
//! verbatim from `shared/golden/units`). Bytes must match exactly.

use model::formats::{e8m0_to_f32, fp8, mxfp4};
use serde_json::Value;
use std::path::PathBuf;

fn units(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/units").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("golden json")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn hex_bytes(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|h| u8::from_str_radix(h, 16).expect("hex")).collect()
}

fn codes_from_hex(s: &str) -> Vec<u8> {
    s.chars().map(|c| c.to_digit(16).expect("hex digit") as u8).collect()
}

#[test]
fn mxfp4_blocks_match_golden_bytes() {
    let g = units("mxfp4.json");
    let lut = f32s(&g["e2m1_code_to_value"]);
    assert_eq!(lut.len(), 16);
    for (i, v) in lut.iter().enumerate() {
        assert_eq!(v.to_bits(), mxfp4::E2M1_LUT[i].to_bits(), "LUT code {i}");
    }
    for block in g["blocks"].as_array().unwrap() {
        let name = block["name"].as_str().unwrap();
        let input: Vec<f32> = block["input_f32_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| f32::from_bits(u32::from_str_radix(h.as_str().unwrap(), 16).unwrap()))
            .collect();
        for (rule_name, rule) in
            [("ocp_floor", mxfp4::ScaleRule::OcpFloor), ("deepseek_ceil", mxfp4::ScaleRule::DeepSeekCeil)]
        {
            let want = &block[rule_name];
            let (b, codes) = mxfp4::quantize_block(&input, rule);
            let want_b = u8::from_str_radix(want["scale_byte"].as_str().unwrap(), 16).unwrap();
            assert_eq!(b, want_b, "{name}/{rule_name}: scale byte");
            assert_eq!(codes, codes_from_hex(want["codes_hex"].as_str().unwrap()), "{name}/{rule_name}: codes");
            let packed = mxfp4::pack_codes(&codes);
            assert_eq!(
                packed,
                hex_bytes(want["packed_bytes_low_nibble_first"].as_str().unwrap()),
                "{name}/{rule_name}: packed"
            );
            let m = mxfp4::Mxfp4Matrix { rows: 1, cols: 32, packed, scales: vec![b] };
            let deq = m.dequantize();
            for (got, w) in deq.iter().zip(f32s(&want["dequant"])) {
                assert_eq!(got.to_bits(), w.to_bits(), "{name}/{rule_name}: dequant {got} vs {w}");
            }
            if rule == mxfp4::ScaleRule::DeepSeekCeil {
                // The fake-quant used for QAT and the indexer gives the same values.
                let mut x = input.clone();
                mxfp4::fake_quant(&mut x);
                assert_eq!(
                    x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    deq.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{name}: fake_quant"
                );
            }
        }
    }
    // Every byte unpacks to the listed pair of values.
    for (hex, pair) in g["unpack_all_256_bytes"].as_object().unwrap() {
        let b = u8::from_str_radix(hex, 16).unwrap();
        let codes = mxfp4::unpack_codes(&[b]);
        let want = f32s(pair);
        assert_eq!(mxfp4::E2M1_LUT[codes[0] as usize].to_bits(), want[0].to_bits(), "byte {hex} low");
        assert_eq!(mxfp4::E2M1_LUT[codes[1] as usize].to_bits(), want[1].to_bits(), "byte {hex} high");
    }
}

#[test]
fn fp8_blocks_match_golden_bytes() {
    let g = units("fp8_block.json");
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let block: Vec<usize> =
            case["block"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let clamp_min = case["clamp_min"].as_f64().unwrap() as f32;
        let rows_in: Vec<Vec<f32>> = case["input"].as_array().unwrap().iter().map(f32s).collect();
        let (rows, cols) = (rows_in.len(), rows_in[0].len());
        let flat: Vec<f32> = rows_in.concat();
        let q = fp8::quantize_blocks(&flat, rows, cols, block[0], block[1], clamp_min);
        let want_bytes: Vec<u8> =
            case["fp8_bytes"].as_array().unwrap().iter().flat_map(|r| hex_bytes(r.as_str().unwrap())).collect();
        let want_scales: Vec<u8> =
            case["scale_bytes"].as_array().unwrap().iter().flat_map(|r| hex_bytes(r.as_str().unwrap())).collect();
        assert_eq!(q.scales, want_scales, "{name}: scales");
        assert_eq!(q.data, want_bytes, "{name}: fp8 bytes");
        let want_deq: Vec<f32> = case["dequant"].as_array().unwrap().iter().flat_map(f32s).collect();
        let deq = q.dequantize();
        for (i, (a, b)) in deq.iter().zip(&want_deq).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}: dequant[{i}] {a} vs {b}");
        }
        // Activation-style blocks: the in-place fake quant gives the same dequantised values.
        if block[0] == 1 {
            let mut x = flat.clone();
            for row in x.chunks_mut(cols) {
                fp8::fake_quant(row, block[1]);
            }
            for (i, (a, b)) in x.iter().zip(&want_deq).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}: fake_quant[{i}] {a} vs {b}");
            }
        }
        let _ = e8m0_to_f32(q.scales[0]);
    }
}
