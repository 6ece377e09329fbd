//! NF4 4-bit quantization, byte for byte as bitsandbytes does it on the CPU: blocks of 64 values scaled by their
//! absolute maximum, each value mapped to the nearest of 16 normal-float levels, two codes per byte (the
//! even-index value in the high nibble); optionally double quantization, which stores the block maxima minus
//! their mean as 8-bit codes of bitsandbytes' dynamic map in blocks of 256.

/// The 16 NF4 levels (bitsandbytes' `get_4bit_type("nf4")`), ascending.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Values per NF4 block (one absmax each).
pub const BLOCK: usize = 64;
/// Block maxima per block of the second quantization level.
pub const ABSMAX_BLOCK: usize = 256;

/// How a quantized tensor keeps its block maxima.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockScales {
    /// One f32 per block.
    Plain(Vec<f32>),
    /// Double quantization: `absmax[b] = DYNAMIC[codes[b]] · absmax2[b / 256] + offset`.
    Double { codes: Vec<u8>, offset: f32, absmax2: Vec<f32> },
}

/// A tensor stored in NF4: `len` values, packed two per byte, with their block scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    pub len: usize,
    pub packed: Vec<u8>,
    pub scales: BlockScales,
}

impl Nf4Tensor {
    /// Quantizes `values` (bitsandbytes' `quantize_4bit(A, blocksize=64, quant_type="nf4",
    /// compress_statistics=double_quant)`).
    pub fn quantize(values: &[f32], double_quant: bool) -> Self {
        let (codes, absmax) = quantize_codes(values);
        let packed = pack(&codes);
        let scales = if double_quant { double_quantize(&absmax) } else { BlockScales::Plain(absmax) };
        Self { len: values.len(), packed, scales }
    }

    /// The block maxima (decoded from the second level under double quantization).
    pub fn absmax(&self) -> Vec<f32> {
        match &self.scales {
            BlockScales::Plain(absmax) => absmax.clone(),
            BlockScales::Double { codes, offset, absmax2 } => {
                let dynamic = dynamic_map();
                codes
                    .iter()
                    .enumerate()
                    .map(|(b, &c)| dynamic[c as usize] * absmax2[b / ABSMAX_BLOCK] + offset)
                    .collect()
            }
        }
    }

    /// The values the codes stand for: `NF4[code] · absmax[block]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.absmax();
        (0..self.len).map(|i| NF4_CODE[self.code(i) as usize] * absmax[i / BLOCK]).collect()
    }

    /// The 4-bit code of value `i`.
    pub fn code(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f }
    }

    /// Bytes this tensor occupies: packed codes plus its scales.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len()
            + match &self.scales {
                BlockScales::Plain(absmax) => 4 * absmax.len(),
                BlockScales::Double { codes, absmax2, .. } => codes.len() + 4 + 4 * absmax2.len(),
            }
    }

    /// Storage per value, in bits.
    pub fn bits_per_value(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.len.max(1) as f64
    }
}

/// Per value its NF4 index and per block its absmax, as bitsandbytes' default `quantize_4bit` kernel computes
/// them: full blocks scale by a reciprocal (`x · (1 / max(absmax, 1e-38))`), a short last block divides by its
/// absmax (clamped to 1e-38, and stored clamped); the scaled value, clamped to [-1, 1], takes the index of the
/// first midpoint between levels it does not exceed (`torch.bucketize`, so a value on a midpoint rounds down).
fn quantize_codes(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let midpoints: Vec<f32> = NF4_CODE.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let bucket = |scaled: f32| midpoints.iter().take_while(|&&m| m < scaled).count() as u8;
    let mut codes = Vec::with_capacity(values.len() + 1);
    let mut absmax = Vec::with_capacity(values.len().div_ceil(BLOCK));
    let full = values.len() / BLOCK * BLOCK;
    for block in values[..full].chunks(BLOCK) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let inverse = 1.0 / max.max(1e-38);
        codes.extend(block.iter().map(|&v| bucket((v * inverse).clamp(-1.0, 1.0))));
        absmax.push(max);
    }
    if full < values.len() {
        let tail = &values[full..];
        let max = tail.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-38);
        codes.extend(tail.iter().map(|&v| bucket((v / max).clamp(-1.0, 1.0))));
        absmax.push(max);
    }
    (codes, absmax)
}

/// Two codes per byte, the even-index one in the high nibble; an odd count is padded with the code of 0.0.
fn pack(codes: &[u8]) -> Vec<u8> {
    const ZERO_CODE: u8 = 7;
    codes.chunks(2).map(|pair| pair[0] << 4 | pair.get(1).copied().unwrap_or(ZERO_CODE)).collect()
}

/// bitsandbytes' `quantize_blockwise(absmax - mean, blocksize=256)` with the dynamic map, as its CPU kernel does
/// it: per block of 256 the absolute maximum, then each value times its reciprocal goes through a 65536-entry
/// table of nearest codes.
fn double_quantize(absmax: &[f32]) -> BlockScales {
    let offset = mean_f32(absmax);
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let dynamic = dynamic_map();
    let table = nearest_code_table(&dynamic);
    let mut codes = Vec::with_capacity(centred.len());
    let mut absmax2 = Vec::with_capacity(centred.len().div_ceil(ABSMAX_BLOCK));
    for block in centred.chunks(ABSMAX_BLOCK) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax2.push(max);
        if max == 0.0 {
            codes.extend(std::iter::repeat_n(0, block.len()));
            continue;
        }
        let inverse = 1.0 / max;
        codes.extend(block.iter().map(|&v| table[table_index(v * inverse)]));
    }
    BlockScales::Double { codes, offset, absmax2 }
}

const TABLE_SIZE: usize = 65536;

/// For each of 65536 evenly spaced points of [-1, 1], the index of the nearest code (the first code whose
/// upper midpoint is not below the point).
fn nearest_code_table(code: &[f32]) -> Vec<u8> {
    let midpoints: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut table = Vec::with_capacity(TABLE_SIZE);
    let mut index = 0;
    for i in 0..TABLE_SIZE {
        let point = -1.0 + (2.0 * i as f32) / (TABLE_SIZE - 1) as f32;
        while index < midpoints.len() && midpoints[index] < point {
            index += 1;
        }
        table.push(index as u8);
    }
    table
}

/// The table slot of a scaled value (rounded to nearest, as bitsandbytes' `norm_to_lut_index`).
fn table_index(value: f32) -> usize {
    let value = value.clamp(-1.0, 1.0);
    ((value + 1.0) * 0.5 * (TABLE_SIZE - 1) as f32 + 0.5) as u16 as usize
}

/// `torch.mean` of f32 values as bitsandbytes' double quantization gets it: the sum accumulated in higher
/// precision and rounded to f32, then divided by the count in f32 (checked against torch on the fixtures).
fn mean_f32(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    (values.iter().map(|&v| v as f64).sum::<f64>() as f32) / values.len() as f32
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map()`): for exponents 10^-6 .. 10^0, the midpoints
/// of an evenly spaced grid on [0.1, 1] with 2^i + 1 points, both signs, plus 0 and 1, sorted.
pub fn dynamic_map() -> Vec<f32> {
    let mut values: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7 {
        let points = (1usize << i) + 1;
        let grid = linspace_f32(0.1, 1.0, points);
        // Python's `10 ** (i - 6)` (a correctly rounded double), cast to f32 by torch's scalar multiply.
        let scale = format!("1e{}", i - 6).parse::<f64>().unwrap_or_default() as f32;
        for pair in grid.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            values.push(scale * mean);
            values.push(-(scale * mean));
        }
    }
    values.push(0.0);
    values.push(1.0);
    values.sort_by(f32::total_cmp);
    values
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the first half counts up from `start`, the
/// second half down from `end`, with the step computed in f32 and each point one fused multiply-add (torch's
/// vectorised kernel).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}
