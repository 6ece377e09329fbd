//! Keys and values of tokens already seen, per layer, for incremental decoding.

use burn::tensor::{Tensor, backend::Backend};

/// Per-layer keys and values `[batch, kv_heads, len, head_dim]` (after RoPE), and how many positions they hold.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0 }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn take(&mut self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.layers[layer].take()
    }

    pub(crate) fn put(&mut self, layer: usize, kv: (Tensor<B, 4>, Tensor<B, 4>)) {
        self.layers[layer] = Some(kv);
    }

    pub(crate) fn advance(&mut self, by: usize) {
        self.len += by;
    }
}
