//! Ranks as threads of one process, exchanging through shared buffers.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{Communicator, DistError};

/// State shared by the ranks of one group.
struct Shared {
    world: usize,
    state: Mutex<State>,
    turn: Condvar,
}

struct State {
    /// Each rank's contribution to the collective in progress.
    slots: Vec<Vec<f32>>,
    /// Ranks that reached the current barrier.
    arrived: usize,
    /// Increases each time all ranks pass a barrier.
    generation: u64,
    failure: Option<DistError>,
}

/// One rank of an in-process group. Create the whole group with [`InProcess::group`] and move each member to
/// its thread.
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
}

impl InProcess {
    pub fn group(world: usize) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State { slots: vec![Vec::new(); world], arrived: 0, generation: 0, failure: None }),
            turn: Condvar::new(),
        });
        (0..world).map(|rank| InProcess { rank, shared: shared.clone() }).collect()
    }

    /// The group's first failure (the rank that aborted first and why), if any rank aborted.
    pub fn failure(&self) -> Option<DistError> {
        self.lock().failure.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock leaves the data consistent (we only swap whole vectors).
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every rank arrived; fails as soon as any rank aborted.
    fn wait_all<'a>(&'a self, mut state: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>, DistError> {
        if let Some(err) = &state.failure {
            return Err(err.clone());
        }
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.shared.world {
            state.arrived = 0;
            state.generation += 1;
            self.shared.turn.notify_all();
            return Ok(state);
        }
        while state.generation == generation {
            if let Some(err) = &state.failure {
                return Err(err.clone());
            }
            state = self.shared.turn.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        Ok(state)
    }

    /// Posts `data`, waits for all ranks, applies `read` to all contributions, then waits again so no rank
    /// overwrites its slot before the others have read it.
    fn exchange<T>(
        &self,
        data: &[f32],
        read: impl FnOnce(&[Vec<f32>]) -> Result<T, DistError>,
    ) -> Result<T, DistError> {
        let mut state = self.lock();
        state.slots[self.rank].clear();
        state.slots[self.rank].extend_from_slice(data);
        let state = self.wait_all(state)?;
        let expected = state.slots[0].len();
        let result = match state.slots.iter().position(|s| s.len() != expected) {
            Some(rank) => Err(DistError::LengthMismatch { rank, expected, found: state.slots[rank].len() }),
            None => read(&state.slots),
        };
        drop(self.wait_all(state)?);
        result
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        let summed = self.exchange(data, |slots| {
            let mut sum = slots[0].clone();
            for other in &slots[1..] {
                sum.iter_mut().zip(other).for_each(|(s, v)| *s += v);
            }
            Ok(sum)
        })?;
        data.copy_from_slice(&summed);
        Ok(())
    }

    fn reduce_scatter_sum(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        let world = self.shared.world;
        let chunk = data.len() / world;
        let range = self.rank * chunk..(self.rank + 1) * chunk;
        self.exchange(data, |slots| {
            let mut sum = slots[0][range.clone()].to_vec();
            for other in &slots[1..] {
                sum.iter_mut().zip(&other[range.clone()]).for_each(|(s, v)| *s += v);
            }
            Ok(sum)
        })
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<f32>, DistError> {
        self.exchange(data, |slots| Ok(slots.concat()))
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), DistError> {
        if root >= self.shared.world {
            return Err(DistError::BadRoot { root, world: self.shared.world });
        }
        let value = self.exchange(data, |slots| Ok(slots[root].clone()))?;
        data.copy_from_slice(&value);
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        let state = self.lock();
        self.wait_all(state).map(drop)
    }

    fn abort(&self, reason: &str) {
        let mut state = self.lock();
        if state.failure.is_none() {
            state.failure = Some(DistError::PeerFailed { rank: self.rank, reason: reason.to_string() });
        }
        self.shared.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Send + 'static>(world: usize, f: impl Fn(InProcess) -> T + Send + Sync + 'static) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = InProcess::group(world)
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_give_every_rank_the_same_exact_answer() {
        let results = run(4, |c| {
            let r = c.rank() as f32;
            let mut summed = vec![0.1 * (r + 1.0), r, 1.0, -r, 0.3, 7.0, r * r, 2.0];
            c.all_reduce_sum(&mut summed).unwrap();
            let scattered = c.reduce_scatter_sum(&[r; 8]).unwrap();
            let gathered = c.all_gather(&[r, r]).unwrap();
            let mut root = vec![r; 3];
            c.broadcast(&mut root, 2).unwrap();
            c.barrier().unwrap();
            (summed, scattered, gathered, root)
        });
        let want_sum = ((0.1f32 + 0.2) + 0.3) + 0.4; // rank order
        for (summed, scattered, gathered, root) in &results {
            assert_eq!(summed[0].to_bits(), want_sum.to_bits());
            assert_eq!(summed[1..4], [6.0, 4.0, -6.0]);
            assert_eq!(*scattered, vec![6.0, 6.0]);
            assert_eq!(*gathered, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
            assert_eq!(*root, vec![2.0; 3]);
        }
    }

    #[test]
    fn a_failed_rank_releases_the_others() {
        let results = run(3, |c| {
            if c.rank() == 1 {
                c.abort("out of memory");
                return Err(DistError::PeerFailed { rank: 1, reason: "self".into() });
            }
            let mut data = vec![1.0; 4];
            c.all_reduce_sum(&mut data)
        });
        for (rank, result) in results.iter().enumerate().filter(|(r, _)| *r != 1) {
            assert_eq!(
                *result,
                Err(DistError::PeerFailed { rank: 1, reason: "out of memory".into() }),
                "rank {rank} must not hang"
            );
        }
    }

    #[test]
    fn mismatched_lengths_are_reported_not_summed() {
        let results = run(2, |c| c.all_gather(&vec![0.0; c.rank() + 1]));
        assert!(results.iter().all(|r| matches!(r, Err(DistError::LengthMismatch { rank: 1, expected: 1, found: 2 }))));
    }
}
