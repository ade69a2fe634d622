//! One training stage for one seed: its setup (parameters, optimizer, projections, what a
//! resumed checkpoint holds, disk caches), its steps, the end of each epoch (validation,
//! the metrics line, the best epoch, a checkpoint), and its summary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use kd_plan::{Keep, Metric, NonFinite, Op, Plan, Stage};

use super::cache::{CacheKey, CacheTable, OutputCache};
use super::checkpoint::{Checkpoint, StageState};
use super::data_parallel;
use super::graph::{run_step, BatchData, StepInput, StepOutput};
use super::non_finite::NonFiniteValue;
use super::optim::{Optim, Update};
use super::validate::Validation;
use super::{Projections, Run, StepTime};
use crate::data::epoch_order;
use crate::error::{plan_error, Result, RuntimeError, TensorContext};
use crate::model::Model;
use crate::output::progress::{EpochLine, StageProgress};
use crate::output::summary::StageSummary;

/// A stage in progress: what its steps and epochs share, and what a checkpoint taken
/// inside it saves (the optimizer, the best epoch's weights, the cache, the projections).
pub(super) struct StageRun<'s> {
    stage: &'s Stage,
    seed: u64,
    samples: usize,
    batch: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    /// The trained model's parameters, then the stage's projections'.
    params: Vec<(String, Var)>,
    optim: Optim,
    best_weights: Option<Vec<Tensor>>,
    st: StageState,
    /// Frozen models' outputs, per sample, for this stage's `CachedForward` nodes.
    cache: OutputCache,
    projections: Projections,
    /// In the stage's order: `project1.weight`, `project1.bias`, `project2.weight`, ...
    projection_vars: Vec<(String, Var)>,
    /// The distinct `(data, split)` the stage's batches come from.
    sources: Vec<(String, String)>,
    /// `cache: disk` files, and how many samples each table held when the stage started
    /// (only tables that grew are saved).
    disk_tables: Vec<(CacheKey, PathBuf)>,
    loaded: HashMap<CacheKey, usize>,
    teacher_on_validation: Option<Vec<u32>>,
    progress: StageProgress,
    /// Since when seconds have not yet been added to `st.seconds`.
    clock: Instant,
    /// Set when the stage prunes its model gradually.
    gradual: Option<kd_plan::Pruning>,
    /// In a sweep: a digest of each frozen model as the stage starts, which names its
    /// outputs for other configurations.
    prints: HashMap<String, sha2::Sha256>,
}

impl Run<'_> {
    pub(super) fn train_stage(
        &mut self,
        stage: &Stage,
        seed: u64,
        models: &mut HashMap<String, Model>,
        resume: Option<Checkpoint>,
    ) -> Result<StageSummary> {
        let mut run = self.start_stage(stage, seed, models, resume)?;
        while run.st.epoch < stage.epochs && !run.st.stopped {
            self.train_epoch(&mut run, models)?;
        }
        self.finish_stage(run, models)
    }

    /// In a sweep, the digest of each model the stage runs frozen on augmented batches.
    fn frozen_prints(
        &self,
        stage: &Stage,
        models: &HashMap<String, Model>,
    ) -> Result<HashMap<String, sha2::Sha256>> {
        let mut prints = HashMap::new();
        if self.opts.shared.is_none() || stage.augment.is_none() {
            return Ok(prints);
        }
        for name in &stage.frozen {
            let model = self.model_ref(models, name)?;
            prints.insert(name.clone(), super::shared::model_print(self.plan, model)?);
        }
        Ok(prints)
    }

    fn start_stage<'s>(
        &self,
        stage: &'s Stage,
        seed: u64,
        models: &mut HashMap<String, Model>,
        resume: Option<Checkpoint>,
    ) -> Result<StageRun<'s>> {
        let samples = self.dataset(&stage.data)?.split(&stage.split)?.len();
        if samples == 0 && stage.epochs > 0 {
            return Err(RuntimeError::Data {
                data: stage.data.clone(),
                reason: format!(
                    "split `{}` that stage `{}` trains on is empty",
                    stage.split, stage.name
                ),
                help: None,
            });
        }
        let batch = stage.batch.max(1);
        let steps_per_epoch = samples.div_ceil(batch);
        let total_steps = steps_per_epoch * stage.epochs;
        let mut params = self.model_ref(models, &stage.trains)?.params().to_vec();
        // The stage's own projections train with the model and are dropped after it.
        let projections = projections(stage, seed, &self.device)?;
        let projection_vars: Vec<(String, Var)> = stage
            .projections
            .iter()
            .filter_map(|p| projections.get(&p.name).map(|wb| (&p.name, wb)))
            .flat_map(|(name, (w, b))| {
                [
                    (format!("{name}.weight"), w.clone()),
                    (format!("{name}.bias"), b.clone()),
                ]
            })
            .collect();
        params.extend(projection_vars.iter().cloned());
        let mut optim = Optim::new(&stage.optimizer, params.len());
        let mut best_weights = None;
        let mut st = StageState::default();
        let mut cache = OutputCache::default();
        if let Some(checkpoint) = resume {
            let sizes: Vec<usize> = params.iter().map(|(_, v)| v.elem_count()).collect();
            let path = super::checkpoint::path(&self.opts.out_dir);
            optim.restore(checkpoint.optimizer_for(&sizes, &path)?);
            best_weights = checkpoint.best()?;
            cache = checkpoint.cache(&path)?;
            checkpoint.restore_projections(&projection_vars, &path)?;
            st = checkpoint.state.stage.unwrap_or_default();
        }
        // `cache: disk`: tables of earlier runs with the same model weights and data.
        let disk_tables = self.disk_tables(stage, models)?;
        for (key, file) in &disk_tables {
            if cache.tables.contains_key(key) {
                continue;
            }
            let samples = self.dataset(&key.1)?.split(&key.2)?.len();
            if let Some(table) = CacheTable::load(file, samples) {
                cache.tables.insert(key.clone(), table);
            }
        }
        let loaded = cache
            .tables
            .iter()
            .map(|(key, table)| (key.clone(), table.filled_count()))
            .collect();
        let progress = StageProgress::start(self.opts.progress, &stage.name, seed, total_steps);
        progress.skip(st.global_step);
        Ok(StageRun {
            stage,
            seed,
            samples,
            batch,
            steps_per_epoch,
            total_steps,
            params,
            optim,
            best_weights,
            st,
            cache,
            projections,
            projection_vars,
            sources: self.batch_sources(stage),
            disk_tables,
            loaded,
            teacher_on_validation: self.teacher_on_validation(stage, models)?,
            prints: self.frozen_prints(stage, models)?,
            progress,
            clock: Instant::now(),
            gradual: super::pruning::gradual(self.plan, stage).cloned(),
        })
    }

    /// The rest of the epoch in progress (all of it unless a resume starts mid-way).
    fn train_epoch(
        &mut self,
        run: &mut StageRun,
        models: &mut HashMap<String, Model>,
    ) -> Result<()> {
        let (stage, seed, epoch) = (run.stage, run.seed, run.st.epoch);
        let started = Instant::now();
        let order = epoch_order(
            seed,
            &format!("shuffle/{}/{epoch}", stage.name),
            run.samples,
        );
        // Batch nodes on other splits walk their own shuffled order, cycling.
        let primary = (stage.data.clone(), stage.split.clone());
        let mut other_orders = HashMap::new();
        for source in run.sources.iter().filter(|s| **s != primary) {
            let n = self.dataset(&source.0)?.split(&source.1)?.len();
            let stream = format!("shuffle/{}/{}.{}/{epoch}", stage.name, source.0, source.1);
            other_orders.insert(source.clone(), epoch_order(seed, &stream, n));
        }
        if run.st.step == 0 {
            run.st.loss_sum = 0.0;
            run.st.loss_samples = 0;
        }
        while run.st.step < run.steps_per_epoch {
            let step = run.st.step;
            let positions = &order[step * run.batch..((step + 1) * run.batch).min(run.samples)];
            self.train_step(run, models, positions, &other_orders)?;
        }
        self.end_epoch(run, models, started)
    }

    /// One step on the samples at `positions` of the epoch's order: batches, forwards,
    /// loss, backward and update (or a skip), and a checkpoint when one is due.
    fn train_step(
        &mut self,
        run: &mut StageRun,
        models: &mut HashMap<String, Model>,
        positions: &[usize],
        other_orders: &HashMap<(String, String), Vec<usize>>,
    ) -> Result<()> {
        let started = Instant::now();
        let stage = run.stage;
        let step = run.st.step;
        let mut batches = HashMap::with_capacity(run.sources.len());
        for source in &run.sources {
            let data = match other_orders.get(source) {
                Some(other) if !other.is_empty() => {
                    let picked: Vec<usize> = (0..positions.len())
                        .map(|k| other[(step * run.batch + k) % other.len()])
                        .collect();
                    self.build_batch(&source.0, &source.1, &picked)?
                }
                _ => self.build_batch(&source.0, &source.1, positions)?,
            };
            batches.insert(source.clone(), data);
        }
        let update = self
            .step_update(run, models, &batches, positions.len())
            .map_err(|e| out_of_memory(e, &stage.name, stage.batch, &self.device_name))?;
        if let Some(loss) = update {
            run.st.loss_sum += loss * positions.len() as f64;
            run.st.loss_samples += positions.len();
        }
        if let Some(times) = &self.opts.step_times {
            if let Ok(mut times) = times.lock() {
                times.push(StepTime {
                    stage: stage.name.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        run.st.step += 1;
        run.st.global_step += 1;
        if let Some(pruning) = &run.gradual {
            let done = run.st.global_step;
            if done.is_multiple_of(pruning.every.max(1)) || done == run.total_steps {
                let sparsity = super::pruning::sparsity_after(pruning, done, run.total_steps);
                let model = models
                    .get_mut(&stage.trains)
                    .ok_or_else(|| plan_error(format!("no model `{}`", stage.trains)))?;
                match pruning.neurons.is_empty() {
                    true => model.prune_to(&pruning.tensors, sparsity)?,
                    false => model.mask_neurons(&pruning.neurons, sparsity)?,
                }
            }
        }
        run.progress.step();
        let every = self.plan.settings.checkpoint_every;
        let due = every.is_some_and(|n| run.st.global_step.is_multiple_of(n.max(1)));
        if (due && run.st.step < run.steps_per_epoch) || self.interrupted() {
            self.checkpoint_stage(run, models)?;
            self.stop_if_interrupted()?;
        }
        Ok(())
    }

    /// The step's forwards, loss, backward and optimizer update: the loss when the update
    /// was applied, `None` when a non-finite loss or gradient skipped the batch
    /// (`non_finite: skip`; otherwise that ends the run).
    fn step_update(
        &mut self,
        run: &mut StageRun,
        models: &mut HashMap<String, Model>,
        batches: &HashMap<(String, String), BatchData>,
        batch_rows: usize,
    ) -> Result<Option<f64>> {
        let stage = run.stage;
        let world = &self.opts.world;
        let distributed = world.size() > 1;
        // A data-parallel rank computes its rows of the batch (none when the batch has
        // fewer rows than there are ranks).
        let rows = world.shard(batch_rows);
        let lr = stage.schedule.lr_at(
            stage.optimizer.lr(),
            run.st.global_step,
            run.total_steps,
            run.steps_per_epoch,
        );
        let input = StepInput {
            plan: self.plan,
            stage,
            seed: run.seed,
            epoch: run.st.epoch,
            step: run.st.step,
            validating: false,
            batches,
            validation: None,
            fills: &self.fills,
            projections: &run.projections,
            progress: (run.st.global_step, run.total_steps),
            shard: distributed.then(|| (world.rank(), world.size())),
            frozen: self
                .opts
                .shared
                .as_deref()
                .map(|shared| (shared, &run.prints)),
        };
        // A skipped batch must not leave its batch-norm statistics behind.
        let saved_statistics = match self.plan.settings.non_finite == NonFinite::Skip {
            true => Some(self.model_ref(models, &stage.trains)?.buffer_snapshot()?),
            false => None,
        };
        let cached_before = distributed.then(|| data_parallel::filled_rows(&run.cache));
        let output = match rows.is_empty() {
            true => StepOutput::default(),
            false => run_step(&input, models, &mut run.cache)?,
        };
        let mut value = match (&output.loss, rows.is_empty()) {
            (_, true) => 0.0,
            (Some(loss), false) => f64::from(
                loss.to_dtype(candle_core::DType::F32)
                    .and_then(|l| l.to_scalar::<f32>())
                    .ctx("reading the loss")?,
            ),
            (None, false) => {
                return Err(plan_error(format!(
                    "stage `{}` computes no loss",
                    stage.name
                )))
            }
        };
        let mut grads = GradStore::default();
        if let (Some(loss), true) = (&output.loss, value.is_finite()) {
            let model = self.model_ref(models, &stage.trains)?;
            grads = model
                .backward(loss)
                .ctx_with(|| format!("backward of stage `{}`", stage.name))?;
            model.mask_gradients(&mut grads)?;
        }
        let mut finite = value.is_finite();
        let mut frozen = output.frozen_samples;
        if distributed {
            let weight = rows.len() as f64 / batch_rows.max(1) as f64;
            let agreed = data_parallel::agree(
                world,
                &data_parallel::Local {
                    weight,
                    loss: finite.then_some(value),
                    non_finite: !finite,
                    frozen_samples: frozen,
                    interrupted: self.interrupt_asked(),
                },
            )?;
            (value, finite, frozen) = (agreed.loss, !agreed.non_finite, agreed.frozen_samples);
            self.stop_agreed = agreed.interrupted;
            if finite {
                data_parallel::sum_gradients(world, &run.params, &mut grads, weight)?;
            }
        }
        run.st.teacher_forwards += frozen;
        let applied = if finite {
            let model = self.model_ref(models, &stage.trains)?;
            match run.optim.step(&run.params, &grads, lr, stage.clip)? {
                Update::Applied { .. } => {
                    model.apply_masks()?;
                    true
                }
                Update::NonFinite { parameter } => {
                    self.non_finite(stage, &run.st, NonFiniteValue::Gradient(parameter))?;
                    false
                }
            }
        } else {
            self.non_finite(stage, &run.st, NonFiniteValue::Loss(output.non_finite))?;
            false
        };
        if !applied {
            run.st.skipped_batches += 1;
            if let Some(saved) = &saved_statistics {
                self.model_ref(models, &stage.trains)?
                    .restore_buffers(saved)?;
            }
        }
        if let Some(before) = cached_before {
            let model = models
                .get_mut(&stage.trains)
                .ok_or_else(|| plan_error(format!("no model `{}`", stage.trains)))?;
            data_parallel::share_model_state(world, model)?;
            data_parallel::share_cache(world, &mut run.cache, &before)?;
        }
        Ok(applied.then_some(value))
    }

    /// The end of an epoch: its loss, its validation, its line in `metrics.jsonl` and on
    /// the progress display, the best epoch so far, and a checkpoint.
    fn end_epoch(
        &mut self,
        run: &mut StageRun,
        models: &mut HashMap<String, Model>,
        started: Instant,
    ) -> Result<()> {
        let (stage, seed, epoch) = (run.stage, run.seed, run.st.epoch);
        run.st.epochs_run += 1;
        run.st.final_loss = run.st.loss_sum / run.st.loss_samples.max(1) as f64;
        // The learning rate of the epoch's last step.
        let lr = stage.schedule.lr_at(
            stage.optimizer.lr(),
            run.st.global_step.saturating_sub(1),
            run.total_steps,
            run.steps_per_epoch,
        );
        let validation = match &stage.validate {
            Some(_) => Some(self.validate(
                stage,
                seed,
                epoch,
                models,
                &mut run.cache,
                (
                    run.teacher_on_validation.as_ref(),
                    &run.projections,
                    // Scheduled loss parameters at their final value: every epoch's
                    // validation loss then measures the same objective (`keep best loss`
                    // and `early_stop` compare them).
                    (run.total_steps.saturating_sub(1), run.total_steps),
                ),
            )?),
            None => None,
        };
        let seconds = started.elapsed().as_secs_f64();
        let mut line = serde_json::json!({
            "seed": seed,
            "stage": stage.name,
            "model": stage.trains,
            "epoch": epoch + 1,
            "steps": run.st.global_step,
            "lr": lr,
            "train_loss": run.st.final_loss,
            "seconds": seconds,
        });
        if let Some(map) = line.as_object_mut() {
            if let Some(v) = &validation {
                map.insert("val_accuracy".into(), v.metrics.accuracy.into());
                map.insert("val_f1".into(), v.metrics.f1.into());
                map.insert("val_loss".into(), v.loss.into());
            }
            if run.st.skipped_batches > 0 {
                map.insert("skipped_batches".into(), run.st.skipped_batches.into());
            }
            // Scheduled loss parameters, at the epoch's last step.
            let scheduled = scheduled_values(
                self.plan,
                stage,
                run.st.global_step.saturating_sub(1),
                run.total_steps,
            );
            if !scheduled.is_empty() {
                map.insert("schedules".into(), scheduled.into());
            }
            // Gradual pruning: the sparsity of the masks in force at the epoch's end.
            if let Some(pruning) = &run.gradual {
                let done = run.st.global_step;
                let updated = match done == run.total_steps {
                    true => done,
                    false => done - done % pruning.every.max(1),
                };
                let sparsity = super::pruning::sparsity_after(pruning, updated, run.total_steps);
                map.insert("sparsity".into(), sparsity.into());
            }
        }
        self.log.write(&line)?;
        run.progress.epoch(&EpochLine {
            seed,
            stage: &stage.name,
            epoch: epoch + 1,
            epochs: stage.epochs,
            train_loss: run.st.final_loss,
            val: validation.as_ref().map(|v| (v.metrics.accuracy, v.loss)),
            seconds,
        });
        if let Some(v) = &validation {
            self.track_best(run, models, v)?;
        }
        run.st.epoch += 1;
        run.st.step = 0;
        self.checkpoint_stage(run, models)?;
        self.stop_if_interrupted()
    }

    /// Keeps the best epoch's number (and weights, under `keep: best`) and decides early
    /// stopping.
    fn track_best(
        &self,
        run: &mut StageRun,
        models: &HashMap<String, Model>,
        validation: &Validation,
    ) -> Result<()> {
        let Some(validate) = &run.stage.validate else {
            return Ok(());
        };
        let metric = match validate.keep {
            Keep::Best(metric) => metric,
            Keep::Last => Metric::Loss,
        };
        let value = validation.value(metric)?;
        let improved = match run.st.best {
            None => value.is_finite(),
            Some((best, _)) if metric.higher_is_better() => value > best,
            Some((best, _)) => value < best,
        };
        // Data-parallel ranks keep the same epochs and stop together: rank 0 decides.
        let improved = self.opts.world.rank0_flags(&[improved])?[0];
        if improved {
            if let Keep::Best(_) = validate.keep {
                run.best_weights = Some(self.model_ref(models, &run.stage.trains)?.snapshot()?);
            }
            run.st.best = Some((value, run.st.epoch + 1));
            run.st.epochs_without_improvement = 0;
        } else {
            run.st.epochs_without_improvement += 1;
        }
        let stopped = validate
            .early_stop
            .is_some_and(|patience| run.st.epochs_without_improvement >= patience);
        run.st.stopped = self.opts.world.rank0_flags(&[stopped])?[0];
        Ok(())
    }

    /// A checkpoint of the run inside the stage.
    fn checkpoint_stage(
        &mut self,
        run: &mut StageRun,
        models: &HashMap<String, Model>,
    ) -> Result<()> {
        run.st.seconds += run.clock.elapsed().as_secs_f64();
        run.clock = Instant::now();
        self.state.stage = Some(run.st.clone());
        self.checkpoint(
            Some((
                &run.optim,
                run.best_weights.as_ref(),
                &run.cache,
                &run.projection_vars,
            )),
            models,
        )
    }

    /// Saves the disk cache's tables that grew, takes back the best epoch's weights under
    /// `keep: best`, and sums the stage up.
    fn finish_stage(&self, run: StageRun, models: &HashMap<String, Model>) -> Result<StageSummary> {
        let StageRun { stage, st, .. } = &run;
        run.progress.finish();
        for (key, file) in run.disk_tables.iter().filter(|_| self.opts.world.writes()) {
            if let Some(table) = run.cache.tables.get(key) {
                if run.loaded.get(key) != Some(&table.filled_count()) {
                    table.save(file)?;
                }
            }
        }
        // The next stage's ranks read whole tables, the same on every rank.
        self.opts.world.barrier()?;
        let mut best_epoch = None;
        if let Some(Keep::Best(_)) = stage.validate.as_ref().map(|v| &v.keep) {
            if let (Some((_, epoch)), Some(weights)) = (st.best, &run.best_weights) {
                self.model_ref(models, &stage.trains)?.restore(weights)?;
                best_epoch = Some(epoch);
            }
        }
        let seconds = st.seconds + run.clock.elapsed().as_secs_f64();
        let processed = (run.samples * st.epochs_run) as f64;
        Ok(StageSummary {
            name: stage.name.clone(),
            model: stage.trains.clone(),
            seed: run.seed,
            epochs: st.epochs_run,
            steps: st.global_step,
            seconds,
            samples_per_s: if seconds > 0.0 {
                processed / seconds
            } else {
                0.0
            },
            final_loss: st.final_loss,
            teacher_forwards: st.teacher_forwards,
            skipped_batches: st.skipped_batches,
            best_epoch,
            shared_from: None,
        })
    }
}

/// A step that ran out of GPU memory, as a diagnostic naming the stage and its batch size
/// (any other error as it is).
fn out_of_memory(error: RuntimeError, stage: &str, batch: usize, device: &str) -> RuntimeError {
    let text = match &error {
        RuntimeError::Tensor { source, .. } => source.to_string(),
        _ => return error,
    };
    match text.contains("CUDA_ERROR_OUT_OF_MEMORY") || text.contains("out of memory") {
        true => RuntimeError::OutOfMemory {
            device: device.to_string(),
            stage: stage.to_string(),
            batch,
        },
        false => error,
    }
}

/// Fresh weights and biases for a stage's projections, each drawn from its own stream
/// (uniform in `±1/sqrt(input)`, as PyTorch's `Linear`).
fn projections(stage: &Stage, seed: u64, device: &candle_core::Device) -> Result<Projections> {
    let mut out = Projections::new();
    for p in &stage.projections {
        let bound = 1.0 / (p.input.max(1) as f64).sqrt();
        let draw = |part: &str, shape: Vec<usize>| {
            let name = format!("{}.{part}", p.name);
            let mut rng =
                crate::rng::Rng::new(seed, &format!("init/projection/{}/{name}", stage.name));
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| rng.uniform_in(-bound, bound) as f32)
                .collect();
            Var::from_vec(values, shape.as_slice(), device)
                .ctx_with(|| format!("initialising projection `{name}`"))
        };
        let weight = draw("weight", vec![p.out, p.input])?;
        let bias = draw("bias", vec![p.out])?;
        out.insert(p.name.clone(), (weight, bias));
    }
    Ok(out)
}

/// The value of each scheduled loss parameter of `stage` (`LOSS.PARAM`) at `step` of
/// `total`. A name bound to two different schedules in one stage (a loss called twice)
/// logs the second as `LOSS.PARAM#2`, and so on.
fn scheduled_values(
    plan: &Plan,
    stage: &Stage,
    step: usize,
    total: usize,
) -> serde_json::Map<String, serde_json::Value> {
    // In the order they are written.
    let mut scheduled: Vec<(usize, &String, &kd_plan::ValueSchedule)> = stage
        .nodes
        .iter()
        .filter_map(|&n| {
            let node = plan.graph.node_weight(n)?;
            match &node.op {
                Op::Scheduled { name, schedule } => Some((node.span.start, name, schedule)),
                _ => None,
            }
        })
        .collect();
    scheduled.sort_by_key(|(at, _, _)| *at);
    let mut seen: Vec<(&str, &kd_plan::ValueSchedule)> = Vec::new();
    let mut values = serde_json::Map::new();
    for (_, name, schedule) in scheduled {
        if seen.iter().any(|(n, s)| *n == name && *s == schedule) {
            continue;
        }
        let before = seen.iter().filter(|(n, _)| *n == name).count();
        seen.push((name, schedule));
        let key = match before {
            0 => name.clone(),
            n => format!("{name}#{}", n + 1),
        };
        values.insert(key, schedule.at(step, total).into());
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_gpu_memory_names_the_stage_and_its_batch() {
        let cuda = RuntimeError::Tensor {
            context: "forward of `s`".into(),
            source: candle_core::Error::Msg(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            ),
        };
        let error = out_of_memory(cuda, "distill", 512, "cuda:0");
        assert_eq!(
            error.to_string(),
            "stage `distill` ran out of memory on `cuda:0` at batch size 512"
        );
        let other = RuntimeError::Tensor {
            context: "forward of `s`".into(),
            source: candle_core::Error::Msg("shape mismatch".into()),
        };
        assert!(matches!(
            out_of_memory(other, "distill", 512, "cuda:0"),
            RuntimeError::Tensor { .. }
        ));
    }
}
