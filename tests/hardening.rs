//! The store under stress and after accidents, through the real binary (issue 17): concurrent
//! creates, deletes, cleans and lists that must neither hang nor fail.

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Run, TestStore, daemons_for, mounts_under, oci};

/// The longest one command may take before it counts as hung (a create of the 32-layer image
/// takes about a second alone, a few with everything else running beside it).
const HANG: Duration = Duration::from_secs(30);

/// Runs nestfs with `args`; a run still going after [`HANG`] is killed and reported, with the
/// store's locks in /proc/locks and the kernel stack it was stuck in.
fn run_bounded(s: &TestStore, args: &[&str]) -> Result<Run, String> {
    let mut child = s
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nestfs");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > HANG {
            let stuck = hang_report(&child);
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("nestfs {args:?} hung for {HANG:?}: {stuck}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("collect output");
    Ok(out.into())
}

fn hang_report(child: &Child) -> String {
    let stack = std::fs::read_to_string(format!("/proc/{}/stack", child.id())).unwrap_or_default();
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    format!("stack:\n{stack}\n/proc/locks:\n{locks}")
}

/// Records a failed or hung run in `failures`; true if it succeeded.
fn check(failures: &Mutex<Vec<String>>, args: &[&str], r: Result<Run, String>) -> bool {
    let msg = match r {
        Ok(r) if r.code == 0 => return true,
        Ok(r) => format!("nestfs {args:?} failed: {r:#?}"),
        Err(hung) => hung,
    };
    failures.lock().unwrap().push(msg);
    false
}

/// What every image left in the store must be: listed as mounted, its layers present and its
/// rootfs readable.
fn assert_served(s: &TestStore, ids: &[String]) {
    let list = s.run(&["list", "--json"]).ok().json();
    let mut listed: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    listed.sort();
    let want: Vec<(String, String)> = ids.iter().map(|i| (i.clone(), "mounted".into())).collect();
    assert_eq!(listed, want);
    for id in ids {
        let dir = s.root().join("images").join(id);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("image.json")).unwrap()).unwrap();
        for key in meta["layers"].as_array().unwrap() {
            let v = s.root().join("volumes").join(key.as_str().unwrap());
            assert!(v.is_dir(), "{id}: volume {} is gone", v.display());
        }
        let version = std::fs::read_to_string(dir.join("rootfs/base-image-version.txt"));
        assert!(
            version.is_ok_and(|v| !v.is_empty()),
            "{id}: rootfs unreadable"
        );
    }
    assert_eq!(
        daemons_for(s.dir.path()).len(),
        ids.len(),
        "one daemon per image"
    );
    assert_eq!(
        mounts_under(s.dir.path()).len(),
        ids.len(),
        "one mount per image"
    );
}

/// Debris in images/ (dot names) or tmp/ that a finished run left behind.
fn debris(s: &TestStore) -> Vec<String> {
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut left: Vec<String> = names(&s.root().join("images"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    left.extend(names(&s.root().join("tmp")));
    left
}

/// Issue 17, first bug: creates of one many-layer image beside each other, with deletes,
/// cleans and lists, deadlocked in `flock` on volume locks about twice a minute.
#[test]
fn concurrent_creates_deletes_and_cleans_never_hang() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("garden-rootfs");
    let until = Instant::now() + Duration::from_secs(40);
    let failures = Mutex::new(Vec::new());
    let (rounds, cleans, lists) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let loops = 3;
    std::thread::scope(|t| {
        for w in 0..loops {
            let (s, image, failures, rounds) = (&s, &image, &failures, &rounds);
            t.spawn(move || {
                for n in 0.. {
                    if Instant::now() > until {
                        break;
                    }
                    let id = format!("w{w}-{n}");
                    let create = ["create", image.as_str(), &id];
                    if !check(failures, &create, run_bounded(s, &create)) {
                        return;
                    }
                    let delete = ["delete", &id];
                    if !check(failures, &delete, run_bounded(s, &delete)) {
                        return;
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                // One image per loop stays, for the consistency checks below.
                let keep = format!("w{w}-kept");
                let create = ["create", image.as_str(), &keep];
                check(failures, &create, run_bounded(s, &create));
            });
        }
        let (s, failures, cleans, lists) = (&s, &failures, &cleans, &lists);
        t.spawn(move || {
            let clean = ["clean"];
            while Instant::now() < until && check(failures, &clean, run_bounded(s, &clean)) {
                cleans.fetch_add(1, Ordering::Relaxed);
            }
        });
        t.spawn(move || {
            // Only a hang counts here: lists that fail are the next test's subject.
            while Instant::now() < until {
                if let Err(hung) = run_bounded(s, &["list"]) {
                    failures.lock().unwrap().push(hung);
                }
                lists.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    let failures = failures.into_inner().unwrap();
    eprintln!(
        "{} create/delete rounds, {} cleans, {} lists",
        rounds.into_inner(),
        cleans.into_inner(),
        lists.into_inner()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let kept: Vec<String> = (0..loops).map(|w| format!("w{w}-kept")).collect();
    assert_served(&s, &kept);
    assert_eq!(debris(&s), Vec::<String>::new(), "debris left");
    for id in &kept {
        s.run(&["delete", id]).ok();
    }
    assert!(mounts_under(s.dir.path()).is_empty());
    assert!(daemons_for(s.dir.path()).is_empty());
}
