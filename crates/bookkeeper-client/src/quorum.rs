//! Round-robin striping of entries over an ensemble, and the quorum rules built on it.
//!
//! Entry `e` is stored by the ensemble indices `(e + i) mod E` for `i` in `0..Qw` (its write
//! set); it is durable once `Qa` of them acknowledged it. A read that must hear from "enough"
//! bookies (LAC reads, fencing) is complete once every possible write set has fewer than `Qa`
//! bookies whose answer is still unknown: then no write set can still gather `Qa` acks unseen.

/// Striping of one ensemble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Ensemble size (E).
    pub ensemble: usize,
    /// Write quorum (Qw).
    pub write_quorum: usize,
    /// Ack quorum (Qa).
    pub ack_quorum: usize,
}

impl Schedule {
    /// The ensemble indices that store `entry_id`, preferred read replica first.
    pub fn write_set(&self, entry_id: i64) -> impl Iterator<Item = usize> + '_ {
        let e = self.ensemble as i64;
        let start = entry_id.rem_euclid(e) as usize;
        (0..self.write_quorum).map(move |i| (start + i) % self.ensemble)
    }

    /// The write set of `entry_id` as a bit mask of ensemble indices.
    pub fn write_set_mask(&self, entry_id: i64) -> u64 {
        self.write_set(entry_id)
            .fold(0u64, |mask, i| mask | (1u64 << i))
    }

    /// How many ENOENTRY-like answers from a write set prove an entry was never acknowledged:
    /// `Qw - Qa + 1` (fewer than `Qa` bookies of the set can then hold it).
    pub fn absent_threshold(&self) -> usize {
        self.write_quorum - self.ack_quorum + 1
    }

    /// Whether answers from the bookies in `answered` (bit mask of ensemble indices) cover
    /// every write set: each has fewer than `Qa` indices not in `answered`.
    pub fn is_covered(&self, answered: u64) -> bool {
        (0..self.ensemble).all(|start| {
            let unknown = (0..self.write_quorum)
                .map(|i| (start + i) % self.ensemble)
                .filter(|i| answered & (1u64 << i) == 0)
                .count();
            unknown < self.ack_quorum
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn write_sets_stripe_round_robin() {
        // Goal: E=3, Qw=2 places e0 on {0,1}, e1 on {1,2}, e2 on {2,0}.
        let s = Schedule {
            ensemble: 3,
            write_quorum: 2,
            ack_quorum: 2,
        };
        assert_eq!(s.write_set(0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(s.write_set(1).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.write_set(2).collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(s.write_set(3).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(s.write_set_mask(2), 0b101);
        let big = (1i64 << 40) + 1;
        assert_eq!(
            s.write_set(big).collect::<Vec<_>>(),
            vec![(big % 3) as usize, ((big + 1) % 3) as usize]
        );
    }

    #[test]
    fn coverage_needs_every_write_set_below_ack_quorum_unknown() {
        // Goal: with E=3 Qw=2 Qa=2, one answer is not enough, any two are.
        let s = Schedule {
            ensemble: 3,
            write_quorum: 2,
            ack_quorum: 2,
        };
        assert!(!s.is_covered(0));
        assert!(!s.is_covered(0b001));
        assert!(s.is_covered(0b011));
        assert!(s.is_covered(0b101));
        assert!(s.is_covered(0b110));
        // Qa=1: every bookie of every write set must answer.
        let s = Schedule {
            ensemble: 3,
            write_quorum: 2,
            ack_quorum: 1,
        };
        assert!(!s.is_covered(0b011));
        assert!(s.is_covered(0b111));
        // E=Qw=Qa=3: one answer suffices.
        let s = Schedule {
            ensemble: 3,
            write_quorum: 3,
            ack_quorum: 3,
        };
        assert!(s.is_covered(0b100));
        assert_eq!(s.absent_threshold(), 1);
    }

    proptest! {
        #[test]
        fn coverage_matches_definition(e in 1usize..8, qw_off in 0usize..8, qa_off in 0usize..8, answered in any::<u64>()) {
            // Goal: covered iff every write set contains at least Qw-Qa+1 answered bookies.
            let qw = e - qw_off.min(e - 1);
            let qa = qw - qa_off.min(qw - 1);
            let s = Schedule { ensemble: e, write_quorum: qw, ack_quorum: qa };
            let answered = answered & ((1u64 << e) - 1);
            let expected = (0..e as i64).all(|entry| {
                (s.write_set_mask(entry) & answered).count_ones() as usize >= s.absent_threshold()
            });
            prop_assert_eq!(s.is_covered(answered), expected);
            prop_assert_eq!(s.write_set(0).count(), qw);
        }
    }
}
