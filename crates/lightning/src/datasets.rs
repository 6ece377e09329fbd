//! [`Datasets`]: a [`DataModule`] over items held in memory (Lightning's `LightningDataModule.from_datasets`),
//! reshuffled every epoch from a seed. Its position (the epoch and the next item) is part of every checkpoint, so
//! a run stopped in the middle of an epoch resumes on the very batch it would have drawn next.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::data::DataModule;
use crate::error::{LightningError, Result};

/// Training and validation items, served in batches of `batch_size`; an epoch's last batch holds what is left
/// (Lightning's `drop_last=False`). [`sharded`](Self::sharded) splits them over the ranks of a world.
#[derive(Debug, Clone)]
pub struct Datasets<T> {
    train: Vec<T>,
    val: Vec<T>,
    batch_size: usize,
    /// `None`: the items in their order, every epoch.
    seed: Option<u64>,
    epoch: u64,
    /// Index into `order` of the next item to serve.
    next: usize,
    /// This epoch's order of the training items.
    order: Vec<usize>,
    /// At most this many batches an epoch.
    batch_limit: Option<u64>,
    /// This rank and the world's size: each step draws `batch_size` items per rank.
    rank: usize,
    world: usize,
    /// Tokens an item holds, for throughput (default: an item counts as one).
    item_tokens: Option<fn(&T) -> usize>,
}

impl<T: Clone> Datasets<T> {
    /// Serves `train` in order, epoch after epoch, and `val` for validation (none: no validation).
    pub fn new(train: Vec<T>, val: Vec<T>, batch_size: usize) -> Result<Self> {
        if train.is_empty() || batch_size == 0 {
            return Err(LightningError::Invalid(format!(
                "datasets: {} training items in batches of {batch_size}: both must be at least 1",
                train.len()
            )));
        }
        let order = (0..train.len()).collect();
        Ok(Self {
            train,
            val,
            batch_size,
            seed: None,
            epoch: 0,
            next: 0,
            order,
            batch_limit: None,
            rank: 0,
            world: 1,
            item_tokens: None,
        })
    }

    /// Reshuffles the training items at every epoch, in an order drawn from `(seed, epoch)`.
    pub fn shuffled(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.order = self.order_of(self.epoch);
        self
    }

    /// Rank `rank` of `world` ranks: every rank holds all items and draws the same global batches of
    /// `batch_size × world` items in the same order, and takes its own `batch_size` of them, so N ranks train as
    /// one rank with N times the batch. An epoch's short last global batch is filled from the epoch's start so
    /// that every rank gets a full batch (Accelerate's `even_batches`). Validation items go to rank
    /// `index mod world`.
    pub fn sharded(mut self, rank: usize, world: usize) -> Self {
        (self.rank, self.world) = (rank, world.max(1));
        self
    }

    /// Throughput counts `tokens(item)` tokens per item instead of one.
    pub fn counting_tokens(mut self, tokens: fn(&T) -> usize) -> Self {
        self.item_tokens = Some(tokens);
        self
    }

    /// Items one step draws over all ranks.
    fn global_batch(&self) -> usize {
        self.batch_size * self.world
    }

    /// Where an epoch's items end: all of them, or as many as the batch limit serves.
    fn epoch_end(&self) -> usize {
        let limit = self.batch_limit.and_then(|n| usize::try_from(n).ok()?.checked_mul(self.global_batch()));
        limit.map_or(self.order.len(), |items| items.min(self.order.len()))
    }

    fn order_of(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        if let Some(seed) = self.seed {
            order.shuffle(&mut StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        order
    }
}

impl<N, T: Clone> DataModule<N> for Datasets<T> {
    type Batch = Vec<T>;

    fn train_batch(&mut self, _net: &N) -> Result<Vec<T>> {
        if self.next >= self.epoch_end() {
            self.epoch += 1;
            self.next = 0;
            self.order = self.order_of(self.epoch);
        }
        let end = (self.next + self.global_batch()).min(self.epoch_end());
        let mut global: Vec<usize> = self.order[self.next..end].to_vec();
        if self.world > 1 {
            let drawn = global.len();
            global.extend((0..self.global_batch() - drawn).map(|k| self.order[k % self.epoch_end()]));
        }
        self.next = end;
        let mine = global.iter().skip(self.rank * self.batch_size).take(self.batch_size);
        Ok(mine.map(|&i| self.train[i].clone()).collect())
    }

    fn position(&self) -> Value {
        json!({"epoch": self.epoch, "next": self.next})
    }

    fn seek(&mut self, position: &Value) -> Result<()> {
        let (Some(epoch), Some(next)) = (position["epoch"].as_u64(), position["next"].as_u64()) else {
            return Err(LightningError::Invalid(format!(
                "data position {position}: expected {{\"epoch\": N, \"next\": N}} (a checkpoint of another data module?)"
            )));
        };
        let next = usize::try_from(next).unwrap_or(usize::MAX);
        if next > self.train.len() {
            return Err(LightningError::Invalid(format!(
                "data position {position}: item {next} is past the {} training items",
                self.train.len()
            )));
        }
        (self.epoch, self.next) = (epoch, next);
        self.order = self.order_of(epoch);
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn epochs_completed(&mut self) -> Result<Option<u64>> {
        Ok(Some(self.epoch + u64::from(self.next >= self.epoch_end())))
    }

    fn limit_train_batches(&mut self, batches: u64) -> Result<()> {
        self.batch_limit = Some(batches.max(1));
        Ok(())
    }

    fn batch_tokens(&self, batch: &Vec<T>) -> usize {
        self.item_tokens.map_or(batch.len(), |tokens| batch.iter().map(tokens).sum())
    }

    fn has_validation(&self) -> bool {
        !self.val.is_empty()
    }

    fn validation_pass(&self, max_batches: usize, visit: &mut dyn FnMut(&Vec<T>) -> Result<()>) -> Result<()> {
        let mine: Vec<T> = self.val.iter().skip(self.rank).step_by(self.world).cloned().collect();
        for batch in mine.chunks(self.batch_size).take(max_batches) {
            visit(&batch.to_vec())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(data: &mut Datasets<u32>, n: usize) -> Vec<Vec<u32>> {
        (0..n).map(|_| DataModule::<()>::train_batch(data, &()).unwrap()).collect()
    }

    #[test]
    fn epochs_reshuffle_and_a_seek_continues_mid_epoch_exactly() {
        let mut data = Datasets::new((0..10).collect(), vec![], 4).unwrap().shuffled(7);
        let first = draw(&mut data, 3);
        assert_eq!(first.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2], "the epoch's last batch is short");
        let mut seen: Vec<u32> = first.concat();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>(), "each item once per epoch");
        let position = DataModule::<()>::position(&data);
        let later = draw(&mut data, 2);
        assert_eq!(DataModule::<()>::epoch(&data), 1);
        assert_ne!(later[0], first[0], "epoch 1 draws another order");

        let mut resumed = Datasets::new((0..10).collect(), vec![], 4).unwrap().shuffled(7);
        draw(&mut resumed, 1);
        DataModule::<()>::seek(&mut resumed, &position).unwrap();
        assert_eq!(draw(&mut resumed, 2), later);
        let err = DataModule::<()>::seek(&mut resumed, &json!({"epoch": 0, "next": 11})).unwrap_err();
        assert!(err.to_string().contains("past the 10 training items"), "{err}");
        assert!(Datasets::<u32>::new(vec![], vec![], 1).is_err());
    }

    #[test]
    fn a_batch_limit_shortens_every_epoch_and_epochs_completed_counts_the_last_batch_out() {
        let mut data = Datasets::new((0..10).collect::<Vec<u32>>(), vec![], 3).unwrap();
        DataModule::<()>::limit_train_batches(&mut data, 2).unwrap();
        assert_eq!(DataModule::<()>::epochs_completed(&mut data).unwrap(), Some(0));
        assert_eq!(draw(&mut data, 2), [vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(DataModule::<()>::epochs_completed(&mut data).unwrap(), Some(1));
        assert_eq!(draw(&mut data, 1), [vec![0, 1, 2]], "the next epoch starts over");
        assert_eq!(DataModule::<()>::epoch(&data), 1);
    }

    #[test]
    fn ranks_of_a_sharded_world_split_the_global_batches_of_one_rank_and_validation_by_index() {
        let items: Vec<u32> = (0..10).collect();
        let mut one = Datasets::new(items.clone(), vec![], 4).unwrap().shuffled(3);
        let mut ranks: Vec<Datasets<u32>> = (0..2)
            .map(|r| Datasets::new(items.clone(), (0..5).collect(), 2).unwrap().shuffled(3).sharded(r, 2))
            .collect();
        let global = draw(&mut one, 2);
        let shards: Vec<Vec<Vec<u32>>> = ranks.iter_mut().map(|d| draw(d, 3)).collect();
        assert_eq!([shards[0][0].clone(), shards[1][0].clone()].concat(), global[0]);
        assert_eq!([shards[0][1].clone(), shards[1][1].clone()].concat(), global[1]);
        // The epoch's last 2 items leave rank 1 short: it is filled from the epoch's start.
        assert_eq!(shards[1][2], global[0][..2], "even batches");
        assert_eq!(DataModule::<()>::epoch(&ranks[0]), 0);
        let mut seen = Vec::new();
        for data in &ranks {
            DataModule::<()>::validation_pass(data, 10, &mut |b| {
                seen.extend(b.iter().copied());
                Ok(())
            })
            .unwrap();
        }
        seen.sort();
        assert_eq!(seen, (0..5).collect::<Vec<u32>>(), "each validation item on one rank");
    }
}
