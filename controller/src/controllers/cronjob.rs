//! The CronJob controller (`batch/v1`), as Kubernetes' (v2) behaves: at each
//! time the schedule names (standard five-field cron or an `@hourly`-style
//! macro, in `timeZone` or UTC) a Job named `NAME-<minutes since the epoch>`
//! from the `jobTemplate`; `concurrencyPolicy` (Allow, Forbid — the run
//! waits while one is active —, Replace), `startingDeadlineSeconds`, the
//! history limits and `suspend`. Runs missed while the controller was down
//! are caught up as Kubernetes does: only the most recent missed time
//! starts, and only if it is within `startingDeadlineSeconds` (any, without
//! one); more than 100 missed times are reported with an event.
//!
//! Schedules are parsed by `croner` (the POSIX/Vixie semantics Kubernetes'
//! parser has: a day of month and a day of week both restricted match
//! either); its extensions (`L`, `W`, `#`, seconds, years) are refused, as
//! Kubernetes refuses them.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::job::finished;
use super::podutil::{self, controller_ref};
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::{ControllerError, events};
use crate::store::{Key, WatchEvent};
use crate::write::Propagation;

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// How many missed times are looked at before the controller says so.
const MAX_MISSED: usize = 100;

/// A parsed schedule with its time zone.
pub struct Schedule {
    cron: Cron,
    tz: jiff::tz::TimeZone,
}

/// Parses `schedule` in `time_zone` (UTC when unset), or says what is wrong
/// in Kubernetes' words.
pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if s.starts_with("@every") {
        return Err("@every is not supported; use a cron expression".into());
    }
    if s.contains(['L', 'W', '#', '+', 'l', 'w']) && !s.starts_with('@') {
        // (Month and day names have no L, W or #… except JUL, WED: checked below.)
        let names = s.to_ascii_uppercase();
        let cleaned = ["JUL", "WED", "APR", "MAR", "MAY", "JUN", "AUG", "SEP", "OCT", "NOV", "DEC", "JAN", "FEB"]
            .iter()
            .chain(["MON", "TUE", "THU", "FRI", "SAT", "SUN"].iter())
            .fold(names, |acc, n| acc.replace(n, ""));
        if cleaned.contains(['L', 'W', '#', '+']) {
            return Err(format!("unsupported schedule {s:?}: L, W, # and + are not standard cron"));
        }
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
        .parse(s)
        .map_err(|e| format!("unparseable schedule {s:?}: {e}"))?;
    let tz = match time_zone {
        None => jiff::tz::TimeZone::UTC,
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))?,
    };
    Ok(Schedule { cron, tz })
}

impl Schedule {
    /// The first scheduled time after `t`.
    pub fn next_after(&self, t: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron.find_next_occurrence(&z, false).ok().map(|z| z.timestamp())
    }

    /// The scheduled times in `(from, to]`: the newest, and how many there were
    /// (counting stops past [`MAX_MISSED`]).
    pub fn most_recent(&self, from: jiff::Timestamp, to: jiff::Timestamp) -> (Option<jiff::Timestamp>, usize) {
        let (mut last, mut n) = (None, 0);
        let mut t = from;
        while let Some(next) = self.next_after(t).filter(|n| *n <= to) {
            last = Some(next);
            n += 1;
            t = next;
            if n > MAX_MISSED {
                // Jump to the end: only the newest matters.
                let back = self.cron.find_previous_occurrence(&to.to_zoned(self.tz.clone()), true).ok();
                return (back.map(|z| z.timestamp()).or(last), n);
            }
        }
        (last, n)
    }
}

pub struct CronJobController {
    client: Client,
    ids: (&'static str, &'static str),
}

impl CronJobController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(CronJobController { client, ids: (CronJob::rt()?.id, Job::rt()?.id) })
    }

    fn record(&self, cj: &CronJob, warning: bool, reason: &str, message: &str) {
        events::record(
            &self.client,
            "cronjob-controller",
            ("batch/v1", "CronJob", &cj.metadata),
            warning,
            reason,
            message,
        );
    }

    fn delete_job(&self, j: &Job) -> Result<(), ControllerError> {
        let (ns, name) =
            (j.metadata.namespace.as_deref().unwrap_or_default(), j.metadata.name.as_deref().unwrap_or_default());
        super::ignore_not_found(self.client.delete_raw(
            Job::rt()?,
            ns,
            name,
            j.metadata.uid.as_deref(),
            Propagation::Background,
        ))
    }
}

fn to_time(t: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or_default())
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// When a finished Job finished (or was made), for the history's order.
fn finish_time(j: &Job) -> i64 {
    let s = j.status.as_ref();
    s.and_then(|s| s.completion_time.as_ref())
        .or_else(|| s.and_then(finished).and_then(|c| c.last_transition_time.as_ref()))
        .or(j.metadata.creation_timestamp.as_ref())
        .map_or(0, |t| t.0.as_second())
}

impl Reconcile for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (cj_id, job_id) = self.ids;
        if ev.resource == cj_id {
            out.push(Key::new(cj_id, &ev.namespace, &ev.name));
        } else if ev.resource == job_id {
            for name in podutil::controller_names(ev, "CronJob") {
                out.push(Key::new(cj_id, &ev.namespace, name));
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<CronJob>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(cj) = self.client.get::<CronJob>(&key.namespace, &key.name)? else { return Ok(Action::Done) };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let mut jobs: Vec<Job> = self
            .client
            .list::<Job>(Some(&key.namespace))?
            .into_iter()
            .filter(|j| controller_ref(&j.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        let spec = cj.spec.clone().unwrap_or_default();
        let mut status = cj.status.clone().unwrap_or_default();
        let before = status.clone();

        // The active list: this CronJob's unfinished Jobs.
        let mut active: Vec<ObjectReference> = jobs
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none() && j.status.as_ref().and_then(finished).is_none())
            .map(job_ref)
            .collect();
        for j in &jobs {
            let done = j.status.as_ref().and_then(finished);
            if done.is_some_and(|c| c.type_ == "Complete") {
                let t = finish_time(j);
                if status.last_successful_time.as_ref().is_none_or(|l| l.0.as_second() < t) {
                    status.last_successful_time = jiff::Timestamp::from_second(t).ok().map(Time);
                }
            }
        }

        // History: the newest finished Jobs within the limits stay.
        for (want_complete, limit) in [
            (true, spec.successful_jobs_history_limit.unwrap_or(3)),
            (false, spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut done: Vec<&Job> = jobs
                .iter()
                .filter(|j| j.metadata.deletion_timestamp.is_none())
                .filter(|j| {
                    j.status.as_ref().and_then(finished).is_some_and(|c| (c.type_ == "Complete") == want_complete)
                })
                .collect();
            done.sort_by_key(|j| std::cmp::Reverse(finish_time(j)));
            for j in done.iter().skip(usize::try_from(limit.max(0)).unwrap_or(0)) {
                self.delete_job(j)?;
            }
        }

        let schedule = match parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                self.record(&cj, true, "UnparseableSchedule", &e);
                return self.finish(cj, status, before, active, None);
            }
        };
        let now = jiff::Timestamp::now();
        let mut next_wake = schedule.next_after(now);
        if spec.suspend == Some(true) {
            return self.finish(cj, status, before, active, None);
        }
        let earliest =
            status.last_schedule_time.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
        let earliest = match spec.starting_deadline_seconds {
            // (A deadline reaching before jiff's earliest time is no deadline.)
            Some(d) => {
                earliest.max(now.checked_sub(jiff::SignedDuration::from_secs(d)).unwrap_or(jiff::Timestamp::MIN))
            }
            None => earliest,
        };
        let (due, missed) = schedule.most_recent(earliest, now);
        if missed > MAX_MISSED {
            self.record(
                &cj,
                true,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            );
        }
        if let Some(at) = due {
            let too_late = spec.starting_deadline_seconds.is_some_and(|d| at.as_second() + d < now.as_second());
            let forbid = spec.concurrency_policy.as_deref() == Some("Forbid") && !active.is_empty();
            if too_late {
                self.record(&cj, true, "MissSchedule", &format!("Missed scheduled time to start a job: {at}"));
            } else if forbid {
                // Waits: it starts when the active one has finished (if
                // still within the deadline), as in Kubernetes.
                tracing::info!(cronjob = %format!("{}/{}", key.namespace, key.name), "a Job is still active and concurrencyPolicy is Forbid: waiting");
                self.record(
                    &cj,
                    false,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                );
                next_wake = None;
            } else {
                if spec.concurrency_policy.as_deref() == Some("Replace") {
                    for j in jobs.iter().filter(|j| active.iter().any(|a| a.uid == j.metadata.uid)) {
                        self.delete_job(j)?;
                        self.record(
                            &cj,
                            false,
                            "SuccessfulDelete",
                            &format!("Deleted job {}", j.metadata.name.as_deref().unwrap_or_default()),
                        );
                    }
                    active.clear();
                }
                let job = self.job_for(&cj, at, &spec.job_template)?;
                match self.client.create(&job) {
                    Ok(made) => {
                        self.record(
                            &cj,
                            false,
                            "SuccessfulCreate",
                            &format!("Created job {}", made.metadata.name.as_deref().unwrap_or_default()),
                        );
                        active.push(job_ref(&made));
                        jobs.push(made);
                    }
                    // Made already (by this controller before a restart).
                    Err(ControllerError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
                status.last_schedule_time = Some(to_time(at));
            }
        }
        let wake = next_wake.map(|t| Duration::from_secs((t.as_second() - now.as_second()).max(0).unsigned_abs() + 1));
        self.finish(cj, status, before, active, wake)
    }
}

impl CronJobController {
    fn job_for(
        &self,
        cj: &CronJob,
        at: jiff::Timestamp,
        template: &k8s_openapi::api::batch::v1::JobTemplateSpec,
    ) -> Result<Job, ControllerError> {
        let name = format!("{}-{}", cj.metadata.name.as_deref().unwrap_or_default(), at.as_second() / 60);
        let tmeta = template.metadata.clone().unwrap_or_default();
        let mut annotations = tmeta.annotations.unwrap_or_default();
        let tz = match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
            Some(z) => jiff::tz::TimeZone::get(z).unwrap_or(jiff::tz::TimeZone::UTC),
            None => jiff::tz::TimeZone::UTC,
        };
        annotations.insert(SCHEDULED_TIMESTAMP.into(), at.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
        Ok(Job {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: cj.metadata.namespace.clone(),
                labels: tmeta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![podutil::owner_ref("batch/v1", "CronJob", &cj.metadata)]),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        })
    }

    fn finish(
        &self,
        cj: CronJob,
        mut status: CronJobStatus,
        before: CronJobStatus,
        active: Vec<ObjectReference>,
        wake: Option<Duration>,
    ) -> Result<Action, ControllerError> {
        status.active = (!active.is_empty()).then_some(active);
        if status != before {
            let mut c = cj;
            c.status = Some(status);
            c.metadata.resource_version = None;
            self.client.replace_status(&c)?;
        }
        Ok(wake.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn schedules_follow_cron_and_its_macros_in_their_time_zone() {
        let every = parse("*/1 * * * *", None).expect("parse");
        assert_eq!(every.next_after(ts("2026-01-01T10:00:30Z")), Some(ts("2026-01-01T10:01:00Z")));
        let hourly = parse("@hourly", None).expect("parse");
        assert_eq!(hourly.next_after(ts("2026-01-01T10:00:00Z")), Some(ts("2026-01-01T11:00:00Z")));
        // 09:00 in Berlin is 08:00 UTC in winter.
        let berlin = parse("0 9 * * *", Some("Europe/Berlin")).expect("parse");
        assert_eq!(berlin.next_after(ts("2026-01-01T00:00:00Z")), Some(ts("2026-01-01T08:00:00Z")));
        // Day of month and day of week both restricted: either matches (Vixie).
        let either = parse("0 0 13 * FRI", None).expect("parse");
        assert_eq!(either.next_after(ts("2026-01-01T12:00:00Z")), Some(ts("2026-01-02T00:00:00Z")), "Friday the 2nd");
        for bad in ["* * * *", "0 0 L * *", "TZ=UTC * * * * *", "0 0 * * * *", "@every 5m", "61 * * * *"] {
            assert!(parse(bad, None).is_err(), "{bad} accepted");
        }
        assert!(parse("0 0 * * *", Some("Mars/Olympus")).is_err());
        assert!(parse("0 0 * JUL WED", None).is_ok(), "names with L or W in them are fine");
    }

    #[test]
    fn only_the_most_recent_missed_time_counts() {
        let every = parse("*/1 * * * *", None).expect("parse");
        let (last, n) = every.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:05:30Z"));
        assert_eq!((last, n), (Some(ts("2026-01-01T10:05:00Z")), 5));
        let (last, n) = every.most_recent(ts("2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:30Z"));
        assert_eq!(last, Some(ts("2026-01-02T00:00:00Z")));
        assert!(n > MAX_MISSED);
        assert_eq!(every.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:00:59Z")), (None, 0));
    }
}
