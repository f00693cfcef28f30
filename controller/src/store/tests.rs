use serde_json::json;

use super::*;

fn open(dir: &tempfile::TempDir, history: usize) -> Store {
    Store::open(&dir.path().join("s.redb"), history).expect("open")
}

fn cm(name: &str, v: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": v}})
}

fn put(s: &Store, name: &str, v: &str) -> u64 {
    let key = Key::new("core/configmaps", "default", name);
    s.mutate::<StoreError, _>(&key, |_| Ok(Mutation::Put(cm(name, v)))).expect("put").revision.expect("written")
}

#[test]
fn every_write_bumps_one_global_revision() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir, 10);
    assert_eq!(put(&s, "a", "1"), 1);
    assert_eq!(put(&s, "b", "1"), 2);
    assert_eq!(put(&s, "a", "2"), 3);
    let a = s.get(&Key::new("core/configmaps", "default", "a")).expect("get").expect("exists");
    assert_eq!(a["metadata"]["resourceVersion"], "3");
    assert_eq!(a["data"]["k"], "2");
    let (items, rev) = s.list("core/configmaps", Some("default"), None).expect("list");
    assert_eq!(rev, 3);
    assert_eq!(items.len(), 2);
}

#[test]
fn keep_and_failed_mutations_write_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir, 10);
    put(&s, "a", "1");
    let key = Key::new("core/configmaps", "default", "a");
    let out = s.mutate::<StoreError, _>(&key, |_| Ok(Mutation::Keep)).expect("keep");
    assert_eq!(out.revision, None);
    #[derive(Debug)]
    struct Refused;
    impl From<StoreError> for Refused {
        fn from(_: StoreError) -> Self {
            Refused
        }
    }
    let r = s.mutate::<Refused, _>(&key, |_| Err(Refused));
    assert!(r.is_err());
    assert_eq!(s.revision(), 1);
    assert_eq!(s.get(&key).expect("get").map(|o| o["data"]["k"].clone()), Some(json!("1")));
}

#[test]
fn list_is_scoped_by_resource_and_namespace_and_continues() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir, 10);
    for (ns, name) in [("a", "x"), ("a", "y"), ("b", "x")] {
        let key = Key::new("core/configmaps", ns, name);
        s.mutate::<StoreError, _>(&key, |_| Ok(Mutation::Put(cm(name, ns)))).expect("put");
    }
    let key = Key::new("core/secrets", "a", "x");
    s.mutate::<StoreError, _>(&key, |_| Ok(Mutation::Put(cm("x", "s")))).expect("put");
    assert_eq!(s.list("core/configmaps", Some("a"), None).expect("list").0.len(), 2);
    assert_eq!(s.list("core/configmaps", None, None).expect("list").0.len(), 3);
    assert_eq!(s.list("core/configmaps", None, Some("a/y")).expect("list").0.len(), 1);
    assert_eq!(s.list("core/secrets", None, None).expect("list").0.len(), 1);
}

#[test]
fn state_and_revision_survive_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let s = open(&dir, 10);
        put(&s, "a", "1");
        put(&s, "a", "2");
    }
    let s = open(&dir, 10);
    assert_eq!(s.revision(), 2);
    assert_eq!(put(&s, "b", "1"), 3, "revisions continue after a restart");
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_sees_deletes() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir, 10);
    put(&s, "a", "1");
    let rev = s.revision();
    put(&s, "b", "1");
    let key = Key::new("core/configmaps", "default", "a");
    s.mutate::<StoreError, _>(&key, |_| Ok(Mutation::Delete)).expect("delete");
    let start = s.hub().subscribe(rev).expect("subscribe");
    let seen: Vec<(u64, EventType, String)> = start.replay.iter().map(|e| (e.rev, e.kind, e.name.clone())).collect();
    assert_eq!(seen, vec![(2, EventType::Added, "b".into()), (3, EventType::Deleted, "a".into())]);
    assert_eq!(start.replay[1].object["metadata"]["resourceVersion"], "3", "a delete carries its own revision");
    let mut live = start.live;
    put(&s, "c", "1");
    let ev = live.recv().await.expect("live event");
    assert_eq!((ev.rev, ev.kind, ev.name.as_str()), (4, EventType::Added, "c"));
}

#[test]
fn watch_older_than_history_is_gone() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir, 3);
    for i in 0..6 {
        put(&s, &format!("o{i}"), "1");
    }
    // History holds revisions 4..=6: resuming from 3 works, from 2 does not.
    assert!(s.hub().subscribe(3).is_ok());
    let gone = s.hub().subscribe(2).err().expect("too old");
    assert_eq!(gone.requested, 2);
    // After a restart the history is empty: only the current revision resumes.
    drop(s);
    let s = open(&dir, 3);
    assert!(s.hub().subscribe(6).is_ok());
    assert!(s.hub().subscribe(5).is_err());
}

#[test]
fn mutate_many_is_one_transaction_with_ordered_revisions() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = open(&dir, 10);
    put(&s, "a", "1");
    let keys = [Key::new("core/configmaps", "default", "a"), Key::new("core/configmaps", "default", "b")];
    let outs = s
        .mutate_many::<StoreError, _>(&keys, |cur| {
            assert!(cur[0].is_some() && cur[1].is_none());
            Ok(vec![Mutation::Delete, Mutation::Put(cm("b", "2"))])
        })
        .expect("many");
    assert_eq!(outs[0].revision, Some(2));
    assert_eq!(outs[1].revision, Some(3));
    assert_eq!(s.revision(), 3);
}

#[test]
fn records_survive_a_reopen_without_touching_the_revision() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let s = open(&dir, 10);
        put(&s, "a", "1");
        assert_eq!(s.record("fleet/network").expect("read"), None);
        s.put_record("fleet/network", b"table one").expect("write");
        s.put_record("fleet/network", b"table two").expect("write");
        assert_eq!(s.revision(), 1, "records are not API writes");
    }
    let s = open(&dir, 10);
    assert_eq!(s.record("fleet/network").expect("read").as_deref(), Some(&b"table two"[..]));
    assert_eq!(s.revision(), 1);
}
