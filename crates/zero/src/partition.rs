//! Which rank owns which elements of the trainable parameters, as DeepSpeed flattens them: the parameters laid
//! end to end in path order and cut into windows (a collective's bucket), each window split into `world` equal
//! chunks (the last padded), rank r owning chunk r of every window. Stages 1 and 2 cut uniform windows of about
//! `reduce_bucket_size` elements (with one window, rank r owns one contiguous r-th of the model); stage 3 cuts one
//! window per gather unit (a decoder layer, or a run of the parameters outside the layers), so that a layer is
//! put together by one all-gather of its window.

/// One piece of a parameter that a rank owns: `len` elements from `param_offset` within the parameter, at
/// `chunk_offset` within the rank's chunk of window `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub param_offset: usize,
    pub len: usize,
    pub window: usize,
    pub chunk_offset: usize,
}

/// A parameter's share laid out as its segments say, read from per-window chunks (`chunks[w]` is this rank's
/// chunk of window `w`).
pub fn read_share(chunks: &[Vec<f32>], segments: &[Segment]) -> Vec<f32> {
    segments.iter().flat_map(|s| chunks[s.window][s.chunk_offset..s.chunk_offset + s.len].iter().copied()).collect()
}

/// Writes a parameter's share (`values`, in its segments' order) into per-window chunks: [`read_share`]'s inverse.
pub fn write_share(chunks: &mut [Vec<f32>], segments: &[Segment], values: &[f32]) {
    let mut at = 0;
    for s in segments {
        chunks[s.window][s.chunk_offset..s.chunk_offset + s.len].copy_from_slice(&values[at..at + s.len]);
        at += s.len;
    }
}

/// A window of the flat parameters: `start..end`, split into chunks of `chunk` elements (one per rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub chunk: usize,
}

impl Window {
    /// Elements of the window's collective (chunks of every rank, padding included).
    pub fn span(&self, world: usize) -> usize {
        self.chunk * world
    }
}

/// The flat layout of the trainable parameters over the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// (path, flat offset, elements), in path order.
    params: Vec<(String, usize, usize)>,
    total: usize,
    world: usize,
    windows: Vec<Window>,
    /// Whether the windows are uniform (stages 1 and 2: a checkpoint records the chunk alone).
    uniform: bool,
}

impl Partition {
    /// The layout of parameters of `sizes` (path, elements; in path order) over `world` ranks, with uniform
    /// windows of about `bucket_elems` elements.
    pub fn new(sizes: &[(String, usize)], world: usize, bucket_elems: usize) -> Self {
        let (params, total) = lay_out(sizes);
        let window = bucket_elems.clamp(1, total.max(1));
        Self::uniform(params, total, world, window.div_ceil(world.max(1)))
    }

    /// The uniform layout a checkpoint recorded: `sizes` over `world` ranks with chunks of `chunk` elements.
    pub fn with_chunk(sizes: &[(String, usize)], world: usize, chunk: usize) -> Self {
        let (params, total) = lay_out(sizes);
        Self::uniform(params, total, world, chunk)
    }

    fn uniform(params: Vec<(String, usize, usize)>, total: usize, world: usize, chunk: usize) -> Self {
        let (world, chunk) = (world.max(1), chunk.max(1));
        let span = chunk * world;
        let windows = (0..total.div_ceil(span).max(1))
            .map(|w| Window { start: w * span, end: ((w + 1) * span).min(total), chunk })
            .collect();
        Self { params, total, world, windows, uniform: true }
    }

    /// One window per run of consecutive parameters with the same `unit` (stage 3's gather units: say, the
    /// decoder layer a parameter belongs to, `None` outside the layers).
    pub fn by_unit<U: PartialEq>(sizes: &[(String, usize)], world: usize, unit: impl Fn(&str) -> U) -> Self {
        let (params, total) = lay_out(sizes);
        let world = world.max(1);
        let mut windows: Vec<Window> = Vec::new();
        let mut current: Option<U> = None;
        for (path, offset, len) in &params {
            let key = unit(path);
            match windows.last_mut() {
                Some(window) if current.as_ref() == Some(&key) => window.end = offset + len,
                _ => windows.push(Window { start: *offset, end: offset + len, chunk: 0 }),
            }
            current = Some(key);
        }
        for window in &mut windows {
            window.chunk = (window.end - window.start).div_ceil(world).max(1);
        }
        if windows.is_empty() {
            windows.push(Window { start: 0, end: 0, chunk: 1 });
        }
        Self { params, total, world, windows, uniform: false }
    }

    /// A layout a checkpoint recorded window by window.
    pub fn with_windows(sizes: &[(String, usize)], world: usize, windows: Vec<Window>) -> Self {
        let (params, total) = lay_out(sizes);
        Self { params, total, world: world.max(1), windows, uniform: false }
    }

    /// Elements in all.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The uniform windows' chunk (`None` when each window has its own).
    pub fn uniform_chunk(&self) -> Option<usize> {
        self.uniform.then(|| self.windows[0].chunk)
    }

    /// Windows the flat parameters span.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// Window `w`.
    pub fn window(&self, w: usize) -> Window {
        self.windows[w]
    }

    /// Every window, in flat order.
    pub fn all_windows(&self) -> &[Window] {
        &self.windows
    }

    /// The largest collective of a window, in elements.
    pub fn largest_span(&self) -> usize {
        self.windows.iter().map(|w| w.span(self.world)).max().unwrap_or(0)
    }

    /// The parameters, as (path, flat offset, elements).
    pub fn params(&self) -> &[(String, usize, usize)] {
        &self.params
    }

    /// Elements `rank` owns in all.
    pub fn owned(&self, rank: usize) -> usize {
        (0..self.windows()).map(|w| self.range(rank, w).len()).sum()
    }

    /// The flat range `rank` owns in window `window` (empty past its end).
    pub fn range(&self, rank: usize, window: usize) -> std::ops::Range<usize> {
        let w = self.windows[window];
        let start = w.start + rank * w.chunk;
        start.min(w.end)..(start + w.chunk).min(w.end)
    }

    /// What `rank` owns of each parameter, by path, with the segments in flat order (a parameter spanning
    /// windows has one per window).
    pub fn segments(&self, rank: usize) -> Vec<(String, Vec<Segment>)> {
        let mut out = Vec::new();
        for (path, offset, len) in &self.params {
            let (start, end) = (*offset, offset + len);
            let mut segments = Vec::new();
            for (window, w) in self.windows.iter().enumerate() {
                if w.end <= start || w.start >= end {
                    continue;
                }
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

/// The parameters laid end to end: (path, flat offset, elements) and the total.
fn lay_out(sizes: &[(String, usize)]) -> (Vec<(String, usize, usize)>, usize) {
    let mut params = Vec::with_capacity(sizes.len());
    let mut total = 0;
    for (path, len) in sizes {
        params.push((path.clone(), total, *len));
        total += len;
    }
    (params, total)
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
                    assert!(s.chunk_offset + s.len <= p.window(s.window).chunk);
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
        assert_eq!((p.total(), p.uniform_chunk(), p.windows()), (16, Some(8), 1));
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

    #[test]
    fn unit_windows_follow_the_units_and_cover_every_element_once() {
        let names = ["embed", "layers.0.a", "layers.0.b", "layers.1.a", "norm", "zhead"];
        let sizes: Vec<(String, usize)> =
            names.iter().zip([6usize, 5, 4, 7, 3, 6]).map(|(p, n)| (p.to_string(), n)).collect();
        let layer =
            |path: &str| path.strip_prefix("layers.").and_then(|rest| rest.split('.').next()).map(str::to_owned);
        for world in [1, 2, 3, 4] {
            let p = Partition::by_unit(&sizes, world, layer);
            assert_covers_once(&p);
            let bounds: Vec<(usize, usize)> = p.all_windows().iter().map(|w| (w.start, w.end)).collect();
            assert_eq!(bounds, vec![(0, 6), (6, 15), (15, 22), (22, 31)], "world {world}");
            assert_eq!(p.uniform_chunk(), None);
        }
    }
}
