//! Data-parallel runs: the ranks a launcher started (`mpirun`, Slurm's `srun`), and the
//! collectives a training step needs between them (docs/distributed.md).
//!
//! Every rank holds the same weights and optimizer state. Each step, every rank builds the
//! whole batch (so augmentation, mixup partners and dropout masks are the ones a single
//! process draws), keeps its contiguous share of the rows, and computes the gradient of
//! its share; the gradients are summed, each weighted by its share of the batch, and every
//! rank applies the same update. Sums run in rank order, with the same partition of the
//! values whatever MPI's own algorithms would choose, so every rank gets the same bits and
//! a run with the same number of ranks is bitwise reproducible.
//!
//! Without the `mpi` feature, or with one rank, [`World`] is the single process and every
//! collective returns its input.

use std::ops::Range;

use crate::error::{Result, RuntimeError};

/// The processes of a run and this one's place among them.
#[derive(Clone)]
pub struct World {
    rank: usize,
    size: usize,
    /// Kept so that MPI is finalised when the last copy is dropped.
    #[cfg(feature = "mpi")]
    universe: Option<std::sync::Arc<mpi::environment::Universe>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

impl Default for World {
    fn default() -> World {
        World::single()
    }
}

/// Where a launcher says this process stands: `(rank, size, the variables read)`.
type Placement = (usize, usize, &'static str);

/// The environment variables launchers set, rank first: Open MPI's `mpirun`, MPICH's
/// Hydra, and Slurm's `srun` (`SLURM_STEP_NUM_TASKS`, which `srun` sets for its step:
/// a batch script's own `SLURM_NTASKS` would make a plain `kdc run` inside it look like a
/// rank of several).
const LAUNCHERS: [(&str, &str); 3] = [
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
];

impl World {
    /// One process: no launcher, or one rank.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            #[cfg(feature = "mpi")]
            universe: None,
        }
    }

    /// The world the launcher started this process in: [`World::single`] when no
    /// launcher's variables are set or they say one rank; MPI, initialised here, when they
    /// say several. A placement that does not add up (a rank outside the world, a number
    /// that is not one), several ranks in a kdc built without `mpi`, or MPI disagreeing with
    /// the launcher, is an error.
    pub fn from_launcher() -> Result<World> {
        World::from_variables(|name| std::env::var(name).ok())
    }

    /// [`World::from_launcher`] reading variables through `var`.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Result<World> {
        let Some((rank, size, names)) = placement(var)? else {
            return Ok(World::single());
        };
        if size == 1 {
            return Ok(World::single());
        }
        World::start_mpi(rank, size, names)
    }

    #[cfg(not(feature = "mpi"))]
    fn start_mpi(rank: usize, size: usize, names: &str) -> Result<World> {
        Err(RuntimeError::Distributed {
            reason: format!(
                "the launcher started {size} ranks ({names}; this is rank {rank}), and this kdc was built without MPI"
            ),
            help: Some(
                "build kdc with `cargo build --features mpi` (Debian: libopenmpi-dev openmpi-bin libclang-dev), or run it alone: `kdc run PIPELINE.kd`"
                    .into(),
            ),
        })
    }

    #[cfg(feature = "mpi")]
    fn start_mpi(rank: usize, size: usize, names: &str) -> Result<World> {
        use mpi::traits::Communicator;
        // Collectives run on whichever thread of the pool runs the stage, one at a time.
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| RuntimeError::Distributed {
                reason: "MPI was already initialised in this process".into(),
                help: None,
            })?;
        if threading < mpi::Threading::Serialized {
            return Err(RuntimeError::Distributed {
                reason: format!(
                    "this MPI offers the threading level {threading:?}; kdc calls MPI from a worker thread, which needs Serialized"
                ),
                help: Some("use an MPI built with thread support (Debian's Open MPI is)".into()),
            });
        }
        let world = universe.world();
        let (mpi_rank, mpi_size) = (world.rank() as usize, world.size() as usize);
        if (mpi_rank, mpi_size) != (rank, size) {
            return Err(RuntimeError::Distributed {
                reason: format!(
                    "the launcher's variables ({names}) say rank {rank} of {size}, and MPI says rank {mpi_rank} of {mpi_size}"
                ),
                help: Some(
                    "start kdc with the launcher of the MPI it was built with (`mpirun` of Open MPI, or `srun --mpi=pmix`)"
                        .into(),
                ),
            });
        }
        Ok(World {
            rank,
            size,
            universe: Some(std::sync::Arc::new(universe)),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this process writes the run folder (rank 0).
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    /// This rank's rows of a batch of `n`: contiguous, the first `n % size` ranks taking
    /// one row more than the others.
    pub fn shard(&self, n: usize) -> Range<usize> {
        shard(n, self.rank, self.size)
    }

    /// Element-wise sums over the ranks of `values` (the same length on every rank),
    /// summed in rank order: every rank gets the same bits.
    pub fn sum(&self, values: &mut [f32]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        self.sum_on_mpi(values)
    }

    /// [`World::sum`] for a few `f64` counters (losses, counts): gathered whole, then
    /// summed in rank order.
    pub fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let all = self.gather_f64(values)?;
        let len = values.len();
        for (i, value) in values.iter_mut().enumerate() {
            *value = (0..self.size).map(|r| all[r * len + i]).sum();
        }
        Ok(())
    }

    /// Returns once every rank has called it (a file one rank wrote is then there for
    /// all).
    pub fn barrier(&self) -> Result<()> {
        self.gather_bytes(&[]).map(|_| ())
    }

    /// Rank 0's `flags` on every rank: decisions every rank must take alike (keeping an
    /// epoch's weights, stopping early) even if a rank's own numbers differed in a bit.
    pub fn rank0_flags(&self, flags: &[bool]) -> Result<Vec<bool>> {
        let bytes: Vec<u8> = flags.iter().map(|&f| u8::from(f)).collect();
        let all = self.gather_bytes(&bytes)?;
        match all.first() {
            Some(first) if first.len() == flags.len() => {
                Ok(first.iter().map(|&b| b != 0).collect())
            }
            _ => Err(disagree("a decision", 0, flags.len())),
        }
    }

    /// Rank 0's `values` on every rank.
    pub fn broadcast(&self, values: &mut [f32]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        self.broadcast_on_mpi(values)
    }

    /// Every rank's `bytes`, in rank order.
    pub fn gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.size == 1 {
            return Ok(vec![bytes.to_vec()]);
        }
        self.gather_bytes_on_mpi(bytes)
    }

    /// Before a run: every rank has compiled the same Plan (`plan_hash`), and the run
    /// folder rank 0 made and whether the run resumes (`folder`: `Some` on rank 0 when it
    /// could make it). Every rank gets rank 0's folder and resume; a rank whose Plan
    /// differs, or a rank 0 without a folder, is an error on every rank.
    pub fn agree_on_run(
        &self,
        plan_hash: &str,
        folder: Option<(&std::path::Path, bool)>,
    ) -> Result<(std::path::PathBuf, bool)> {
        // Rank 0 also says whether the run resumes from a checkpoint: a rank that looked
        // for the checkpoint itself could miss one rank 0 is about to remove.
        let mine = format!(
            "{plan_hash}\n{}",
            folder
                .map(|(f, resume)| format!("{}{}", u8::from(resume), f.display()))
                .unwrap_or_default()
        );
        let all = self.gather_bytes(mine.as_bytes())?;
        let parts: Vec<(String, String)> = all
            .iter()
            .map(|bytes| {
                let text = String::from_utf8_lossy(bytes);
                let (hash, folder) = text.split_once('\n').unwrap_or((&text, ""));
                (hash.to_string(), folder.to_string())
            })
            .collect();
        let (hash0, folder0) = parts.first().cloned().unwrap_or_default();
        let differing: Vec<(usize, &str)> = parts
            .iter()
            .enumerate()
            .filter(|(_, (hash, _))| *hash != hash0)
            .map(|(rank, (hash, _))| (rank, hash.as_str()))
            .collect();
        if let Some((_, first)) = differing.first() {
            let ranks: Vec<String> = differing.iter().map(|(r, _)| r.to_string()).collect();
            return Err(RuntimeError::Distributed {
                reason: format!(
                    "the ranks disagree about the Plan: rank {} compiled another Plan than rank 0 (hash {} against {})",
                    ranks.join(", rank "),
                    short(first),
                    short(&hash0),
                ),
                help: Some(
                    "start every rank with the same pipeline file, the same `--set` overrides and the same `--device`"
                        .into(),
                ),
            });
        }
        let resume = folder0.starts_with('1');
        match folder0.get(1..) {
            Some(folder) if !folder.is_empty() => Ok((std::path::PathBuf::from(folder), resume)),
            _ => Err(RuntimeError::Distributed {
                reason: "rank 0 could not make the run folder (its error says why)".into(),
                help: None,
            }),
        }
    }

    /// Stops every rank of the run with `code`: what a rank does after an error, so that
    /// no other rank waits for it in a collective.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.universe.is_some() {
            use mpi::traits::Communicator;
            mpi::topology::SimpleCommunicator::world().abort(code);
        }
        std::process::exit(code)
    }

    fn gather_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut all = Vec::with_capacity(values.len() * self.size);
        for part in self.gather_bytes(&bytes)? {
            if part.len() != bytes.len() {
                return Err(disagree("a sum", part.len(), bytes.len()));
            }
            all.extend(
                part.chunks_exact(8)
                    .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
            );
        }
        Ok(all)
    }
}

/// The first characters of a hash, for messages.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Rows `[start, end)` of `n` for `rank` of `size`.
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start.min(n)..(start + len).min(n)
}

/// Ranks disagreeing about the length of what they sum or gather: the Plans differ.
fn disagree(what: &str, theirs: usize, ours: usize) -> RuntimeError {
    RuntimeError::Distributed {
        reason: format!("the ranks disagree about {what}: {theirs} values against {ours}"),
        help: Some("every rank must run the same pipeline with the same settings".into()),
    }
}

/// The launcher's placement of this process, if any launcher's variables are set.
fn placement(var: impl Fn(&str) -> Option<String>) -> Result<Option<Placement>> {
    for (rank_name, size_name) in LAUNCHERS {
        let (Some(rank), Some(size)) = (var(rank_name), var(size_name)) else {
            continue;
        };
        let names = match rank_name {
            "OMPI_COMM_WORLD_RANK" => "OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE",
            "PMI_RANK" => "PMI_RANK, PMI_SIZE",
            _ => "SLURM_PROCID, SLURM_STEP_NUM_TASKS",
        };
        let number = |name: &str, text: &str| {
            text.trim()
                .parse::<usize>()
                .map_err(|_| RuntimeError::Distributed {
                    reason: format!("`{name}` is `{text}`, not a number of ranks"),
                    help: Some(launcher_help()),
                })
        };
        let (rank, size) = (number(rank_name, &rank)?, number(size_name, &size)?);
        if size == 0 || rank >= size {
            return Err(RuntimeError::Distributed {
                reason: format!(
                    "the launcher puts this process at rank {rank} of a world of {size} ({names})"
                ),
                help: Some(launcher_help()),
            });
        }
        return Ok(Some((rank, size, names)));
    }
    Ok(None)
}

fn launcher_help() -> String {
    "start kdc through the launcher (`mpirun -np N kdc run ...`, `srun -n N kdc run ...`) rather than setting its variables by hand".into()
}

#[cfg(not(feature = "mpi"))]
impl World {
    fn sum_on_mpi(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn broadcast_on_mpi(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn gather_bytes_on_mpi(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
}

#[cfg(feature = "mpi")]
impl World {
    /// A reduce-scatter and an all-gather, as a ring all-reduce moves the data (each rank
    /// sends and receives about twice the values), but with the sums in rank order: rank
    /// `k` receives every rank's part `k` and adds them up from rank 0.
    fn sum_on_mpi(&self, values: &mut [f32]) -> Result<()> {
        use mpi::datatype::{Partition, PartitionMut};
        use mpi::traits::CommunicatorCollectives;
        let world = mpi::topology::SimpleCommunicator::world();
        let lengths = self.gather_bytes(&(values.len() as u64).to_le_bytes())?;
        for part in &lengths {
            if part.as_slice() != (values.len() as u64).to_le_bytes() {
                return Err(disagree("a gradient", 0, values.len()));
            }
        }
        let n = values.len();
        if n < self.size {
            // Some parts would be empty, and Open MPI refuses empty buffers (MPI_ERR_ARG).
            return self.sum_gathered(values);
        }
        let parts: Vec<Range<usize>> = (0..self.size).map(|r| shard(n, r, self.size)).collect();
        let counts: Vec<i32> = parts
            .iter()
            .map(|p| count(p.len()))
            .collect::<Result<_>>()?;
        let displs: Vec<i32> = parts
            .iter()
            .map(|p| count(p.start))
            .collect::<Result<_>>()?;
        // Part k of every rank, in rank order, to rank k.
        let mine = parts[self.rank].clone();
        let recv_counts = vec![count(mine.len())?; self.size];
        let recv_displs: Vec<i32> = (0..self.size)
            .map(|r| count(r * mine.len()))
            .collect::<Result<_>>()?;
        let mut received = vec![0f32; mine.len() * self.size];
        {
            let send = Partition::new(&*values, counts.clone(), displs.clone());
            let mut recv = PartitionMut::new(&mut received[..], recv_counts, recv_displs);
            world.all_to_all_varcount_into(&send, &mut recv);
        }
        let mut summed = vec![0f32; mine.len()];
        for from in received.chunks(mine.len().max(1)).take(self.size) {
            for (sum, &v) in summed.iter_mut().zip(from) {
                *sum += v;
            }
        }
        let mut all = PartitionMut::new(values, counts, displs);
        world.all_gather_varcount_into(&summed[..], &mut all);
        Ok(())
    }

    /// [`World::sum`] of a few values: every rank's gathered whole, summed in rank order.
    fn sum_gathered(&self, values: &mut [f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.gather_bytes(&bytes)?;
        if all.iter().any(|part| part.len() != bytes.len()) {
            return Err(disagree("a gradient", 0, values.len()));
        }
        for (i, value) in values.iter_mut().enumerate() {
            *value = 0.0;
            for part in &all {
                let b = &part[i * 4..i * 4 + 4];
                *value += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }

    fn broadcast_on_mpi(&self, values: &mut [f32]) -> Result<()> {
        use mpi::traits::{Communicator, Root};
        let world = mpi::topology::SimpleCommunicator::world();
        let lengths = self.gather_bytes(&(values.len() as u64).to_le_bytes())?;
        if lengths
            .iter()
            .any(|l| l.as_slice() != (values.len() as u64).to_le_bytes())
        {
            return Err(disagree("a broadcast", 0, values.len()));
        }
        if !values.is_empty() {
            world.process_at_rank(0).broadcast_into(values);
        }
        Ok(())
    }

    fn gather_bytes_on_mpi(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        use mpi::datatype::PartitionMut;
        use mpi::traits::CommunicatorCollectives;
        let world = mpi::topology::SimpleCommunicator::world();
        let mut lengths = vec![0u64; self.size];
        world.all_gather_into(&(bytes.len() as u64), &mut lengths[..]);
        let counts: Vec<i32> = lengths
            .iter()
            .map(|&l| count(l as usize))
            .collect::<Result<_>>()?;
        let mut displs = Vec::with_capacity(self.size);
        let mut total = 0usize;
        for &l in &lengths {
            displs.push(count(total)?);
            total += l as usize;
        }
        if total == 0 {
            // Open MPI refuses an Allgatherv of nothing (MPI_ERR_ARG).
            return Ok(vec![Vec::new(); self.size]);
        }
        let mut all = vec![0u8; total];
        {
            let mut recv = PartitionMut::new(&mut all[..], counts, &displs[..]);
            world.all_gather_varcount_into(bytes, &mut recv);
        }
        let mut out = Vec::with_capacity(self.size);
        let mut at = 0usize;
        for &l in &lengths {
            out.push(all[at..at + l as usize].to_vec());
            at += l as usize;
        }
        Ok(out)
    }
}

/// A length as MPI counts it (`int`).
#[cfg(feature = "mpi")]
fn count(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| RuntimeError::Distributed {
        reason: format!("{n} values are more than one MPI message holds"),
        help: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        for n in [0, 1, 5, 7, 128, 129] {
            for size in 1..6 {
                let parts: Vec<Range<usize>> = (0..size).map(|r| shard(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for pair in parts.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                let (min, max) = (lens.iter().min(), lens.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{lens:?}");
            }
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn no_launcher_or_one_rank_is_a_single_process() {
        let world = World::from_variables(vars(&[])).map(|w| (w.rank(), w.size()));
        assert_eq!(world.ok(), Some((0, 1)));
        let one = vars(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "1")]);
        assert_eq!(World::from_variables(one).map(|w| w.size()).ok(), Some(1));
        // A batch script's own variables, without `srun`: one process.
        let batch = vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]);
        assert_eq!(World::from_variables(batch).map(|w| w.size()).ok(), Some(1));
    }

    #[test]
    fn a_placement_that_does_not_add_up_is_refused() {
        for (rank, size) in [("5", "2"), ("0", "0"), ("x", "2"), ("1", "-2")] {
            let env = vars(&[
                ("OMPI_COMM_WORLD_RANK", rank),
                ("OMPI_COMM_WORLD_SIZE", size),
            ]);
            let error = World::from_variables(env).err().map(|e| e.to_string());
            let text = error.unwrap_or_default();
            assert!(
                text.contains("OMPI_COMM_WORLD") || text.contains("not a number"),
                "{text}"
            );
        }
    }
}
