//! Best-fit-decreasing packing of sequences into rows, and padding collation into [`Batch`]es.

use std::collections::BTreeSet;

use super::Batch;
use super::tokenize::Sequence;
use crate::data::IGNORE_INDEX;

/// One row of a batch before padding: one or more sequences, with position ids restarting per sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRow {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub positions: Vec<u32>,
}

impl PackedRow {
    fn single(seq: Sequence) -> Self {
        let positions = (0..seq.ids.len() as u32).collect();
        Self { ids: seq.ids, labels: seq.labels, positions }
    }

    fn append(&mut self, seq: &Sequence) {
        // The first token of a packed sequence is not predicted from the previous sequence's last token.
        let first_label = if self.ids.is_empty() { seq.labels[0] } else { IGNORE_INDEX };
        self.ids.extend_from_slice(&seq.ids);
        self.labels.push(first_label);
        self.labels.extend_from_slice(&seq.labels[1..]);
        self.positions.extend(0..seq.ids.len() as u32);
    }
}

/// One sequence per row (no packing).
pub fn unpacked(sequences: Vec<Sequence>) -> Vec<PackedRow> {
    sequences.into_iter().filter(|s| !s.is_empty()).map(PackedRow::single).collect()
}

/// Best-fit decreasing: longest sequences first, each into the row with the least room that still fits it, a new
/// row when none does. Rows come out in the order they were opened.
pub fn best_fit_decreasing(mut sequences: Vec<Sequence>, capacity: usize) -> Vec<PackedRow> {
    sequences.retain(|s| !s.is_empty());
    // Stable sort: equal lengths keep their (shuffled) order, so packing is deterministic.
    sequences.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut rows: Vec<PackedRow> = Vec::new();
    // (room left, row index) of every open row.
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
    for mut seq in sequences {
        // Callers truncate to `capacity` already; this keeps the no-overflow promise regardless.
        seq.ids.truncate(capacity);
        seq.labels.truncate(capacity);
        let len = seq.len();
        let fit = room.range((len, 0)..).next().copied();
        let index = match fit {
            Some(entry) => {
                room.remove(&entry);
                entry.1
            }
            None => {
                rows.push(PackedRow { ids: Vec::new(), labels: Vec::new(), positions: Vec::new() });
                rows.len() - 1
            }
        };
        rows[index].append(&seq);
        room.insert((capacity - rows[index].ids.len(), index));
    }
    rows
}

/// Pads rows to `seq_len` into one batch. Padding is labelled [`IGNORE_INDEX`] and, in packed batches, forms its
/// own sequence (positions restart at 0) so no real token attends to it.
pub fn collate(rows: &[PackedRow], seq_len: usize, pad_id: u32, packed: bool) -> Batch {
    let mut input_ids = Vec::with_capacity(rows.len() * seq_len);
    let mut labels = Vec::with_capacity(rows.len() * seq_len);
    let mut positions = Vec::with_capacity(if packed { rows.len() * seq_len } else { 0 });
    for row in rows {
        let len = row.ids.len().min(seq_len);
        let pad = seq_len - len;
        input_ids.extend_from_slice(&row.ids[..len]);
        input_ids.extend(std::iter::repeat_n(pad_id, pad));
        labels.extend_from_slice(&row.labels[..len]);
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        if packed {
            positions.extend_from_slice(&row.positions[..len]);
            positions.extend(0..pad as u32);
        }
    }
    Batch { rows: rows.len(), seq: seq_len, input_ids, labels, position_ids: packed.then_some(positions) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(len: usize, tag: u32) -> Sequence {
        Sequence { ids: vec![tag; len], labels: vec![tag as i64; len] }
    }

    #[test]
    fn bfd_fills_rows_without_overflow_and_keeps_every_sequence_once() {
        let lengths = [7, 3, 5, 2, 8, 1, 4, 6, 2, 3];
        let sequences: Vec<Sequence> = lengths.iter().enumerate().map(|(i, &l)| seq(l, i as u32 + 1)).collect();
        let rows = best_fit_decreasing(sequences, 10);
        assert!(rows.iter().all(|r| r.ids.len() <= 10));
        let total: usize = rows.iter().map(|r| r.ids.len()).sum();
        assert_eq!(total, lengths.iter().sum::<usize>());
        assert_eq!(rows.len(), 5, "41 tokens fit in 5 rows of 10");
        for (i, &len) in lengths.iter().enumerate() {
            let tag = i as u32 + 1;
            let count: usize = rows.iter().map(|r| r.ids.iter().filter(|&&t| t == tag).count()).sum();
            assert_eq!(count, len, "sequence {tag} appears once, whole");
        }
        for row in &rows {
            // Positions restart at each sequence start; a sequence's first label is masked unless it opens the row.
            let mut start = 0;
            while start < row.ids.len() {
                let tag = row.ids[start];
                let len = row.ids[start..].iter().take_while(|&&t| t == tag).count();
                assert_eq!(row.positions[start..start + len], (0..len as u32).collect::<Vec<_>>()[..]);
                if start > 0 {
                    assert_eq!(row.labels[start], IGNORE_INDEX);
                }
                start += len;
            }
        }
    }

    #[test]
    fn collate_pads_with_ignored_labels_and_a_fresh_position_run() {
        let rows = best_fit_decreasing(vec![seq(3, 1), seq(2, 2)], 8);
        let batch = collate(&rows, 8, 0, true);
        assert_eq!(batch.input_ids, vec![1, 1, 1, 2, 2, 0, 0, 0]);
        assert_eq!(batch.labels, vec![1, 1, 1, -100, 2, -100, -100, -100]);
        assert_eq!(batch.position_ids, Some(vec![0, 1, 2, 0, 1, 0, 1, 2]));
        assert_eq!(batch.scored_tokens(), 3);
    }
}
