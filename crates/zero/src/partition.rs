//! Which rank owns which elements of the trainable parameters, as DeepSpeed's stages 1 and 2 flatten them: the
//! parameters laid end to end in path order, cut into windows of `world × chunk` elements (a collective's bucket),
//! rank r owning chunk r of every window. With one window, rank r owns one contiguous r-th of the model.

/// One piece of a parameter that a rank owns: `len` elements from `param_offset` within the parameter, at
/// `chunk_offset` within the rank's chunk of window `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub param_offset: usize,
    pub len: usize,
    pub window: usize,
    pub chunk_offset: usize,
}

/// The flat layout of the trainable parameters over the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// (path, flat offset, elements), in path order.
    params: Vec<(String, usize, usize)>,
    total: usize,
    world: usize,
    /// Elements each rank owns of one window.
    chunk: usize,
}

impl Partition {
    /// The layout of parameters of `sizes` (path, elements; in path order) over `world` ranks, with windows of
    /// about `bucket_elems` elements.
    pub fn new(sizes: &[(String, usize)], world: usize, bucket_elems: usize) -> Self {
        let world = world.max(1);
        let mut params = Vec::with_capacity(sizes.len());
        let mut total = 0;
        for (path, len) in sizes {
            params.push((path.clone(), total, *len));
            total += len;
        }
        let window = bucket_elems.clamp(1, total.max(1));
        Self { params, total, world, chunk: window.div_ceil(world).max(1) }
    }

    /// The layout a checkpoint recorded: `sizes` over `world` ranks with chunks of `chunk` elements.
    pub fn with_chunk(sizes: &[(String, usize)], world: usize, chunk: usize) -> Self {
        let mut partition = Self::new(sizes, world, 1);
        partition.chunk = chunk.max(1);
        partition
    }

    /// Elements in all.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Elements per rank per window (the chunk of a collective; the last window's is padded to it).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Windows the flat parameters span.
    pub fn windows(&self) -> usize {
        self.total.div_ceil(self.chunk * self.world).max(1)
    }

    /// The parameters, as (path, flat offset, elements).
    pub fn params(&self) -> &[(String, usize, usize)] {
        &self.params
    }

    /// Elements `rank` owns in all.
    pub fn owned(&self, rank: usize) -> usize {
        (0..self.windows()).map(|w| self.range(rank, w).len()).sum()
    }

    /// The flat range `rank` owns in window `window` (empty past the end).
    pub fn range(&self, rank: usize, window: usize) -> std::ops::Range<usize> {
        let start = (window * self.world + rank) * self.chunk;
        start.min(self.total)..(start + self.chunk).min(self.total)
    }

    /// What `rank` owns of each parameter, by path, with the segments in flat order (a parameter spanning
    /// windows has one per window).
    pub fn segments(&self, rank: usize) -> Vec<(String, Vec<Segment>)> {
        let mut out = Vec::new();
        for (path, offset, len) in &self.params {
            let (start, end) = (*offset, offset + len);
            let mut segments = Vec::new();
            let first = start / (self.chunk * self.world);
            let last = end.div_ceil(self.chunk * self.world);
            for window in first..last {
                let range = self.range(rank, window);
                let (lo, hi) = (range.start.max(start), range.end.min(end));
                if lo < hi {
                    let chunk_offset = lo - range.start;
                    segments.push(Segment { param_offset: lo - start, len: hi - lo, window, chunk_offset });
                }
            }
            if !segments.is_empty() {
                out.push((path.clone(), segments));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(lens: &[usize]) -> Vec<(String, usize)> {
        lens.iter().enumerate().map(|(i, &n)| (format!("p{i}"), n)).collect()
    }

    /// Every element belongs to exactly one rank, and each rank's segments fit its chunks.
    fn assert_covers_once(p: &Partition) {
        let mut owner = vec![usize::MAX; p.total()];
        for rank in 0..p.world() {
            let mut owned = 0;
            for (path, segments) in p.segments(rank) {
                let (_, offset, _) = p.params().iter().find(|(name, _, _)| *name == path).unwrap();
                for s in segments {
                    assert!(s.chunk_offset + s.len <= p.chunk());
                    let flat = offset + s.param_offset;
                    assert_eq!(flat, p.range(rank, s.window).start + s.chunk_offset);
                    for slot in &mut owner[flat..flat + s.len] {
                        assert_eq!(*slot, usize::MAX, "owned twice");
                        *slot = rank;
                    }
                    owned += s.len;
                }
            }
            assert_eq!(owned, p.owned(rank));
        }
        assert!(owner.iter().all(|&r| r < p.world()), "an element without owner");
    }

    #[test]
    fn one_window_gives_each_rank_a_contiguous_share() {
        let p = Partition::new(&sizes(&[5, 3, 8]), 2, usize::MAX);
        assert_eq!((p.total(), p.chunk(), p.windows()), (16, 8, 1));
        assert_covers_once(&p);
        let rank1 = p.segments(1);
        assert_eq!(rank1.len(), 1, "rank 1 owns the last parameter only: {rank1:?}");
        assert_eq!(rank1[0].0, "p2");
        assert_eq!(rank1[0].1, vec![Segment { param_offset: 0, len: 8, window: 0, chunk_offset: 0 }]);
    }

    #[test]
    fn windows_cover_every_element_once_whatever_the_shapes() {
        for (lens, world, bucket) in
            [(vec![7usize, 1, 13, 4], 3, 6), (vec![1], 4, 100), (vec![10, 10], 4, 3), (vec![3, 5, 2, 9, 1], 2, 4)]
        {
            assert_covers_once(&Partition::new(&sizes(&lens), world, bucket));
        }
    }
}
