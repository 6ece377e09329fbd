//! Position ids for packed batches, and the attention masks they imply.

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

/// Host-side position ids `[batch, seq]`: a new sequence starts wherever an id does not follow the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionIds {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
}

impl PositionIds {
    pub fn new(batch: usize, seq: usize, ids: Vec<u32>) -> Self {
        assert_eq!(ids.len(), batch * seq, "position ids must hold batch × seq values");
        Self { batch, seq, ids }
    }

    /// Sequence index of each token within its row.
    pub fn segments(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.ids.len());
        for row in self.ids.chunks(self.seq) {
            let mut segment = 0u32;
            for (i, &p) in row.iter().enumerate() {
                if i > 0 && p != row[i - 1].wrapping_add(1) {
                    segment += 1;
                }
                out.push(segment);
            }
        }
        out
    }

    /// `[batch, 1, seq, seq]`, `true` where a query may not see a key: the future, other sequences, and keys
    /// beyond the sliding window.
    pub fn attention_mask<B: Backend>(&self, window: Option<usize>, device: &B::Device) -> Option<Tensor<B, 4, Bool>> {
        let segments = self.segments();
        let t = self.seq;
        let mut blocked = Vec::with_capacity(self.batch * t * t);
        for b in 0..self.batch {
            let seg = &segments[b * t..(b + 1) * t];
            let pos = &self.ids[b * t..(b + 1) * t];
            for i in 0..t {
                for j in 0..t {
                    let outside_window = window.is_some_and(|w| pos[i] >= pos[j] + w as u32);
                    blocked.push(j > i || seg[i] != seg[j] || outside_window);
                }
            }
        }
        Some(Tensor::from_data(TensorData::new(blocked, [self.batch, 1, t, t]), device))
    }
}

/// The causal mask with a sliding window, or `None` when the window does not bind (plain causal attention).
pub(crate) fn window_mask<B: Backend>(
    q_len: usize,
    k_len: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let w = window.filter(|&w| w < k_len)?;
    let offset = k_len - q_len;
    let mut blocked = Vec::with_capacity(q_len * k_len);
    for i in 0..q_len {
        let q_pos = i + offset;
        for j in 0..k_len {
            blocked.push(j > q_pos || q_pos >= j + w);
        }
    }
    Some(Tensor::from_data(TensorData::new(blocked, [1, 1, q_len, k_len]), device))
}

/// The mask of `seq` new positions after `past` cached ones for left-padded rows, `[batch, 1, seq, past + seq]`:
/// causal (and windowed), and no position sees row `b`'s first `left_pad[b]` positions, except that a padding
/// position sees itself, so that no softmax row is empty (an empty one would turn its output into NaN, which
/// masked weights of 0 would still carry into later positions).
pub(crate) fn padded_cache_mask<B: Backend>(
    left_pad: &[usize],
    batch: usize,
    seq: usize,
    past: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let k_len = past + seq;
    let mut blocked = Vec::with_capacity(batch * seq * k_len);
    for b in 0..batch {
        let pad = left_pad.get(b).copied().unwrap_or(0);
        for i in 0..seq {
            let q = past + i;
            for j in 0..k_len {
                let future = j > q || window.is_some_and(|w| q >= j + w);
                blocked.push(future || (j < pad && j != q));
            }
        }
    }
    Tensor::from_data(TensorData::new(blocked, [batch, 1, seq, k_len]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_restart_where_ids_do_not_follow() {
        let p = PositionIds::new(1, 7, vec![0, 1, 2, 0, 1, 0, 1]);
        assert_eq!(p.segments(), vec![0, 0, 0, 1, 1, 2, 2]);
    }
}
