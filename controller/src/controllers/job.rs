//! The Job controller (`batch/v1`), as Kubernetes' job controller behaves:
//! up to `parallelism` pods at a time until `completions` have succeeded
//! (or, without `completions`, until one has and none runs), each index
//! once with `completionMode: Indexed`; failed pods are replaced after the
//! pod failure backoff (10 s doubling to 6 min) until `backoffLimit` is
//! passed; `activeDeadlineSeconds`, `suspend` and `ttlSecondsAfterFinished`.
//!
//! Finished pods are counted exactly once through the
//! `batch.kubernetes.io/job-tracking` finalizer, as Kubernetes counts them:
//! each pod is made with it; a finished pod's uid goes into
//! `status.uncountedTerminatedPods` (one status write), its finalizer is
//! removed, and then the uid moves into `succeeded`/`failed` (and
//! `completedIndexes`). A controller restart in between counts nothing
//! twice and loses nothing; a finished pod deleted by hand still counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::{ControllerError, events};
use crate::store::{Key, WatchEvent};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Pods created per pass (as the ReplicaSet controller's burst).
const BURST: usize = 500;
/// The pod failure backoff: 10 s, doubling, at most 6 min.
const BACKOFF_BASE: i64 = 10;
const BACKOFF_MAX: i64 = 360;

pub struct JobController {
    client: Client,
    ids: (&'static str, &'static str),
}

impl JobController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(JobController { client, ids: (Job::rt()?.id, Pod::rt()?.id) })
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default()
}

fn secs(t: &Time) -> i64 {
    t.0.as_second()
}

/// The completion index of a pod of an Indexed Job.
fn index_of(p: &Pod) -> Option<i32> {
    p.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?.parse().ok()
}

/// `completedIndexes` as Kubernetes writes it: `0-2,4,6-7`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in set {
        run = match run {
            Some((a, b)) if b + 1 == i => Some((a, i)),
            Some((a, b)) => {
                out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    out.join(",")
}

/// The indexes of a `completedIndexes` string (what cannot be read is left out).
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    set.extend(a..=b.min(a.saturating_add(1_000_000)));
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    set.insert(i);
                }
            }
        }
    }
    set
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let t = Time(now());
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(t.clone()),
        last_transition_time: Some(t),
    }
}

fn has_condition(s: &JobStatus, type_: &str) -> bool {
    s.conditions.iter().flatten().any(|c| c.type_ == type_ && c.status == "True")
}

/// Finished: `Complete` or `Failed` is True.
pub fn finished(s: &JobStatus) -> Option<&JobCondition> {
    s.conditions.iter().flatten().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn set_condition(s: &mut JobStatus, c: JobCondition) {
    let list = s.conditions.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status => {}
        Some(x) => *x = c,
        None => list.push(c),
    }
}

fn remove_finalizer(meta: &mut ObjectMeta) -> bool {
    let Some(f) = meta.finalizers.as_mut() else { return false };
    let before = f.len();
    f.retain(|x| x != TRACKING_FINALIZER);
    f.len() != before
}

impl JobController {
    /// Takes the tracking finalizer off `pods` (pods of a Job that is gone,
    /// or finished pods already in `uncountedTerminatedPods`).
    fn release(&self, pods: &[Pod]) -> Result<(), ControllerError> {
        for p in pods {
            let mut p = p.clone();
            if remove_finalizer(&mut p.metadata) {
                p.metadata.resource_version = None;
                super::ignore_not_found(self.client.replace(&p).map(|_| ()))?;
            }
        }
        Ok(())
    }

    fn new_pod(&self, job: &Job, index: Option<i32>) -> Pod {
        let name = job.metadata.name.clone().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let mut labels = tmeta.labels.unwrap_or_default();
        labels.insert(CONTROLLER_UID.into(), uid.clone());
        labels.insert(JOB_NAME.into(), name.clone());
        labels.insert("controller-uid".into(), uid);
        labels.insert("job-name".into(), name.clone());
        let mut annotations = tmeta.annotations.unwrap_or_default();
        let mut spec = template.spec.unwrap_or_default();
        let generate_name = match index {
            Some(i) => {
                annotations.insert(COMPLETION_INDEX.into(), i.to_string());
                labels.insert(COMPLETION_INDEX.into(), i.to_string());
                // The pod's hostname is NAME-INDEX, its index in its environment.
                spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
                for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                    c.env.get_or_insert_with(Vec::new).insert(
                        0,
                        EnvVar { name: "JOB_COMPLETION_INDEX".into(), value: Some(i.to_string()), value_from: None },
                    );
                }
                format!("{name}-{i}-")
            }
            None => format!("{name}-"),
        };
        Pod {
            metadata: ObjectMeta {
                generate_name: Some(generate_name),
                namespace: job.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: Some(vec![podutil::owner_ref("batch/v1", "Job", &job.metadata)]),
                finalizers: Some(vec![TRACKING_FINALIZER.into()]),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    /// Deletes pods the controller no longer wants (suspended, finished, over
    /// the deadline): their tracking finalizer goes first, so they are not
    /// counted as failures, as Kubernetes' `deleteJobPods` does.
    fn delete_pods(&self, pods: &[&Pod]) -> Result<(), ControllerError> {
        let owned: Vec<Pod> = pods.iter().map(|p| (*p).clone()).collect();
        self.release(&owned)?;
        for p in pods {
            let (ns, name) =
                (p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name.as_deref().unwrap_or_default());
            super::ignore_not_found(self.client.delete::<Pod>(ns, name, p.metadata.uid.as_deref()))?;
        }
        Ok(())
    }

    fn record(&self, job: &Job, warning: bool, reason: &str, message: &str) {
        events::record(&self.client, "job-controller", ("batch/v1", "Job", &job.metadata), warning, reason, message);
    }
}

impl Reconcile for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (job_id, pod_id) = self.ids;
        if ev.resource == job_id {
            out.push(Key::new(job_id, &ev.namespace, &ev.name));
        } else if ev.resource == pod_id {
            for name in podutil::controller_names(ev, "Job") {
                out.push(Key::new(job_id, &ev.namespace, name));
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<Job>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let pods_in_ns = self.client.list::<Pod>(Some(&key.namespace))?;
        let job = self.client.get::<Job>(&key.namespace, &key.name)?;
        let uid = job.as_ref().and_then(|j| j.metadata.uid.clone());
        // Pods of this name's Job (of this one, or of one that is gone).
        let (mine, strays): (Vec<Pod>, Vec<Pod>) = pods_in_ns
            .into_iter()
            .filter(|p| controller_ref(&p.metadata).is_some_and(|r| r.kind == "Job" && r.name == key.name))
            .partition(|p| controller_ref(&p.metadata).map(|r| Some(&r.uid)) == Some(uid.as_ref()));
        // Pods whose Job is gone keep no finalizer (the garbage collector deletes them).
        self.release(&strays)?;
        let Some(job) = job else { return Ok(Action::Done) };
        if job.metadata.deletion_timestamp.is_some() {
            self.release(&mine)?;
            return Ok(Action::Done);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let mut status = job.status.clone().unwrap_or_default();
        let before = status.clone();
        let now_t = now();
        let now_s = now_t.as_second();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");

        // 1. Count finished pods exactly once (module docs).
        let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let in_uncounted = |u: &UncountedTerminatedPods, uid: &str| {
            u.succeeded.iter().flatten().chain(u.failed.iter().flatten()).any(|x| x == uid)
        };
        let mut completed: BTreeSet<i32> = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
        let mut to_release = Vec::new();
        for p in &mine {
            let has = p.metadata.finalizers.iter().flatten().any(|f| f == TRACKING_FINALIZER);
            let phase = podutil::phase(p);
            if !has || !pod_finished(p) {
                continue;
            }
            let puid = p.metadata.uid.clone().unwrap_or_default();
            if !in_uncounted(&uncounted, &puid) {
                let list = if phase == "Succeeded" { &mut uncounted.succeeded } else { &mut uncounted.failed };
                list.get_or_insert_with(Vec::new).push(puid);
            }
            to_release.push(p.clone());
        }
        if !to_release.is_empty() {
            status.uncounted_terminated_pods = Some(uncounted.clone());
            let mut j = job.clone();
            j.status = Some(status.clone());
            j.metadata.resource_version = None;
            self.client.replace_status(&j)?;
            self.release(&to_release)?;
        }
        // Uids recorded and released (or gone): counted now.
        let tracked: BTreeMap<String, &Pod> = mine
            .iter()
            .filter(|p| p.metadata.finalizers.iter().flatten().any(|f| f == TRACKING_FINALIZER))
            .filter(|p| !to_release.iter().any(|r| r.metadata.uid == p.metadata.uid))
            .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p))
            .collect();
        let index_by_uid: BTreeMap<String, Option<i32>> =
            mine.iter().map(|p| (p.metadata.uid.clone().unwrap_or_default(), index_of(p))).collect();
        let mut new_failure = false;
        for (list, succeeded) in [(&mut uncounted.succeeded, true), (&mut uncounted.failed, false)] {
            let Some(l) = list.as_mut() else { continue };
            l.retain(|u| {
                if tracked.contains_key(u) {
                    return true;
                }
                if succeeded {
                    status.succeeded = Some(status.succeeded.unwrap_or(0) + 1);
                    if let Some(Some(i)) = index_by_uid.get(u) {
                        completed.insert(*i);
                    }
                } else {
                    status.failed = Some(status.failed.unwrap_or(0) + 1);
                    new_failure = true;
                }
                false
            });
        }
        uncounted.succeeded = uncounted.succeeded.filter(|l| !l.is_empty());
        uncounted.failed = uncounted.failed.filter(|l| !l.is_empty());
        status.uncounted_terminated_pods = Some(uncounted);
        if indexed {
            let n = spec.completions.unwrap_or(0);
            completed.retain(|i| (0..n).contains(i));
            status.completed_indexes = Some(format_indexes(&completed));
        }

        // 2. What runs now.
        let active: Vec<&Pod> = mine.iter().filter(|p| podutil::is_active(p)).collect();
        let terminating = mine.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count();
        let succeeded = status.succeeded.unwrap_or(0);
        let failed = status.failed.unwrap_or(0);
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let suspended = spec.suspend == Some(true);
        let mut next: Option<i64> = None;
        let mut wake = |s: i64| next = Some(next.map_or(s, |n: i64| n.min(s)));

        if let Some(done) = finished(&status).cloned() {
            // Finished: nothing runs; the Job goes ttlSecondsAfterFinished later.
            self.delete_pods(&active)?;
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                let at =
                    status.completion_time.as_ref().or(done.last_transition_time.as_ref()).map(secs).unwrap_or(now_s)
                        + i64::from(ttl);
                if at <= now_s {
                    tracing::info!(job = %format!("{}/{}", key.namespace, key.name), "ttlSecondsAfterFinished over: deleting");
                    super::ignore_not_found(self.client.delete_raw(
                        Job::rt()?,
                        &key.namespace,
                        &key.name,
                        job.metadata.uid.as_deref(),
                        crate::write::Propagation::Background,
                    ))?;
                    return Ok(Action::Done);
                }
                wake(at - now_s);
            }
        } else if suspended {
            self.delete_pods(&active)?;
            if !has_condition(&status, "Suspended") {
                set_condition(&mut status, condition("Suspended", "JobSuspended", "Job suspended"));
                self.record(&job, false, "Suspended", "Job suspended");
            }
            status.start_time = None;
        } else {
            if has_condition(&status, "Suspended") {
                if let Some(c) = status.conditions.as_mut() {
                    c.retain(|c| c.type_ != "Suspended");
                }
                self.record(&job, false, "Resumed", "Job resumed");
            }
            let start = status.start_time.get_or_insert(Time(now_t)).clone();
            let complete = match (indexed, spec.completions) {
                (true, Some(n)) => i32::try_from(completed.len()).unwrap_or(i32::MAX) >= n,
                (false, Some(n)) => succeeded >= n,
                // A work queue: done when one has succeeded and none runs.
                (_, None) => succeeded > 0 && active.is_empty(),
            };
            let deadline = spec.active_deadline_seconds.map(|d| secs(&start).saturating_add(d));
            let failure = if failed > backoff_limit {
                Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            } else if !complete && deadline.is_some_and(|d| d <= now_s) {
                Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
            } else {
                None
            };
            if let Some((reason, message)) = failure {
                self.delete_pods(&active)?;
                set_condition(&mut status, condition("FailureTarget", reason, message));
                set_condition(&mut status, condition("Failed", reason, message));
                self.record(&job, true, reason, message);
            } else if complete {
                self.delete_pods(&active)?;
                set_condition(
                    &mut status,
                    condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                );
                set_condition(
                    &mut status,
                    condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
                );
                status.completion_time = Some(Time(now_t));
                self.record(&job, false, "Completed", "Job completed");
            } else {
                if let Some(d) = deadline {
                    wake(d - now_s);
                }
                // The pod failure backoff, from the newest failure.
                let last_failure = mine
                    .iter()
                    .filter(|p| podutil::phase(p) == "Failed")
                    .filter_map(|p| {
                        p.status
                            .as_ref()?
                            .container_statuses
                            .iter()
                            .flatten()
                            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(secs))
                            .max()
                    })
                    .max();
                let delay = if failed > 0 { (BACKOFF_BASE << (failed - 1).clamp(0, 6)).min(BACKOFF_MAX) } else { 0 };
                let ready_at = last_failure.map_or(now_s, |t| t + delay);
                let running = i32::try_from(active.len()).unwrap_or(i32::MAX);
                let want = match (indexed, spec.completions) {
                    (true, Some(n)) => parallelism.min(n - i32::try_from(completed.len()).unwrap_or(n)),
                    (_, Some(n)) => parallelism.min(n - succeeded),
                    // A work queue: no new pod once one has succeeded.
                    (_, None) if succeeded > 0 => running,
                    (_, None) => parallelism,
                };
                let missing = (want - running).max(0);
                if missing > 0 && ready_at > now_s {
                    wake(ready_at - now_s);
                } else if missing > 0 {
                    let mut created = 0usize;
                    if indexed {
                        let n = spec.completions.unwrap_or(0);
                        let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                        for i in (0..n).filter(|i| !completed.contains(i) && !busy.contains(i)) {
                            if created >= usize::try_from(missing).unwrap_or(0).min(BURST) {
                                break;
                            }
                            self.client.create(&self.new_pod(&job, Some(i)))?;
                            created += 1;
                        }
                    } else {
                        for _ in 0..usize::try_from(missing).unwrap_or(0).min(BURST) {
                            self.client.create(&self.new_pod(&job, None))?;
                            created += 1;
                        }
                    }
                    if created > 0 {
                        self.record(&job, false, "SuccessfulCreate", &format!("Created {created} pod(s)"));
                    }
                }
            }
        }
        let active_now: Vec<&Pod> = mine.iter().filter(|p| podutil::is_active(p)).collect();
        status.active = Some(i32::try_from(active_now.len()).unwrap_or(i32::MAX)).filter(|n| *n > 0);
        status.ready = Some(i32::try_from(active_now.iter().filter(|p| podutil::is_ready(p)).count()).unwrap_or(0));
        status.terminating = Some(i32::try_from(terminating).unwrap_or(0));
        if status != before {
            let mut j = self.client.get::<Job>(&key.namespace, &key.name)?.unwrap_or(job);
            j.status = Some(status);
            j.metadata.resource_version = None;
            self.client.replace_status(&j)?;
        }
        Ok(next.map_or(Action::Done, |s| Action::RequeueAfter(Duration::from_secs(s.max(0).unsigned_abs() + 1))))
    }
}

/// A pod that will not run (again): it succeeded or failed, or its deletion
/// is past its grace period (its node stopped it, it never reached one, or
/// it was forced) — counted as failed unless it succeeded.
fn pod_finished(p: &Pod) -> bool {
    if matches!(podutil::phase(p), "Succeeded" | "Failed") {
        return true;
    }
    let unbound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
    p.metadata.deletion_timestamp.is_some() && (unbound || p.metadata.deletion_grace_period_seconds.unwrap_or(0) <= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(parse_indexes("x,3"), [3].into_iter().collect());
    }
}
