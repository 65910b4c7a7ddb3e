//! The store under stress and after accidents, through the real binary (issue 17): concurrent
//! creates, deletes, cleans, lists and remounts that must neither hang nor fail, a stale pid
//! file, a create killed midway, a full store, and the OOM killer.

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Run, TestStore, daemons_for, mounts_under, oci};

/// The longest one command may take before it counts as hung (a create of the 32-layer image
/// takes about a second alone, a few with everything else running beside it).
const HANG: Duration = Duration::from_secs(30);

/// Runs nestfs with `args`; a run still going after [`HANG`] is killed and reported, with
/// /proc/locks and the kernel stack it was stuck in.
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
        let bin = std::fs::read_dir(dir.join("rootfs/bin")).map(|d| d.count());
        assert!(bin.is_ok_and(|n| n > 0), "{id}: rootfs unreadable");
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

/// Runs `args` again and again until `until`; returns how many runs succeeded. Stops at the
/// first failure or hang, recorded in `failures`.
fn repeat(s: &TestStore, args: &[&str], until: Instant, failures: &Mutex<Vec<String>>) -> usize {
    let mut n = 0;
    while Instant::now() < until && check(failures, args, run_bounded(s, args)) {
        n += 1;
    }
    n
}

/// Creates and deletes `image` as `<prefix>-<n>` until `until`, then creates `<prefix>-kept`
/// and leaves it; returns the rounds done. Stops at the first failure or hang.
fn create_delete(
    s: &TestStore,
    image: &str,
    prefix: &str,
    until: Instant,
    failures: &Mutex<Vec<String>>,
) -> usize {
    let mut rounds = 0;
    while Instant::now() < until {
        let id = format!("{prefix}-{rounds}");
        for args in [["create", image, &id].as_slice(), &["delete", &id]] {
            if !check(failures, args, run_bounded(s, args)) {
                return rounds;
            }
        }
        rounds += 1;
    }
    let keep = ["create", image, &format!("{prefix}-kept")];
    check(failures, &keep, run_bounded(s, &keep));
    rounds
}

/// Checks that nothing failed and that the images the loops kept are served intact with no
/// debris beside them, then deletes them and checks that nothing is left.
fn assert_consistent_after(s: &TestStore, failures: Mutex<Vec<String>>, kept: &[String]) {
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_served(s, kept);
    assert_eq!(debris(s), Vec::<String>::new(), "debris left");
    for id in kept {
        s.run(&["delete", id]).ok();
    }
    assert!(mounts_under(s.dir.path()).is_empty());
    assert!(daemons_for(s.dir.path()).is_empty());
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
    let prefixes = ["w0", "w1", "w2"];
    let (s, image, f) = (&s, image.as_str(), &failures);
    let (rounds, cleans, lists) = std::thread::scope(|t| {
        let loops: Vec<_> = prefixes
            .iter()
            .map(|p| t.spawn(move || create_delete(s, image, p, until, f)))
            .collect();
        let cleans = t.spawn(move || repeat(s, &["clean"], until, f));
        let lists = t.spawn(move || repeat(s, &["list"], until, f));
        let rounds: usize = loops.into_iter().map(|l| l.join().unwrap()).sum();
        (rounds, cleans.join().unwrap(), lists.join().unwrap())
    });
    eprintln!("{rounds} create/delete rounds, {cleans} cleans, {lists} lists");
    let kept: Vec<String> = prefixes.iter().map(|p| format!("{p}-kept")).collect();
    assert_consistent_after(s, failures, &kept);
}

/// Issue 17, second bug: `list`, `list --json` and `remount` failed when an image was deleted
/// while they ran; such an image is simply not listed, or not served again.
#[test]
fn lists_and_remounts_beside_deletes_never_fail() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("busybox");
    let until = Instant::now() + Duration::from_secs(20);
    let failures = Mutex::new(Vec::new());
    let prefixes = ["a", "b"];
    let (s, image, f) = (&s, image.as_str(), &failures);
    let (rounds, looks) = std::thread::scope(|t| {
        let loops: Vec<_> = prefixes
            .iter()
            .map(|p| t.spawn(move || create_delete(s, image, p, until, f)))
            .collect();
        let looks: Vec<_> = [&["list"][..], &["list", "--json"], &["remount"]]
            .into_iter()
            .map(|args| t.spawn(move || repeat(s, args, until, f)))
            .collect();
        let rounds: usize = loops.into_iter().map(|l| l.join().unwrap()).sum();
        let looks: Vec<usize> = looks.into_iter().map(|l| l.join().unwrap()).collect();
        (rounds, looks)
    });
    eprintln!("{rounds} create/delete rounds; list, list --json, remount runs: {looks:?}");
    let kept: Vec<String> = prefixes.iter().map(|p| format!("{p}-kept")).collect();
    assert_consistent_after(s, failures, &kept);
}

/// Issue 17, third bug: `delete` of an image whose daemon died waited 10 s and then killed
/// whatever process its stale pid file named, even another image's daemon (pid reuse).
#[test]
fn a_stale_pid_file_never_stops_another_images_daemon() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("busybox");
    let b_rootfs = s.create(&image, "b");
    let pid_file = |id: &str| s.root().join("images").join(id).join("daemon.pid");
    let b_record = std::fs::read_to_string(pid_file("b")).unwrap();
    let b_pid: i32 = b_record.split_whitespace().next().unwrap().parse().unwrap();
    // The pid alone, as an older nestfs wrote it, and B's whole record (pid and start time,
    // so that only the image its daemon serves tells them apart).
    for (id, stale) in [("a", format!("{b_pid}\n")), ("c", b_record.clone())] {
        s.create(&image, id);
        let record = std::fs::read_to_string(pid_file(id)).unwrap();
        let fields: Vec<i32> = record
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        // Its keeper (third field, as root) first: it would start another daemon.
        for own in [fields.get(2), fields.first()].into_iter().flatten() {
            common::kill(*own);
            while common::runs(*own) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::fs::write(pid_file(id), stale).unwrap();
        let start = Instant::now();
        run_bounded(&s, &["delete", id]).unwrap().ok();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "delete {id} took {:?}",
            start.elapsed()
        );
        assert!(
            !s.root().join("images").join(id).exists(),
            "{id} not deleted"
        );
        let bin = std::fs::read_dir(b_rootfs.join("bin")).map(|d| d.count());
        assert!(
            bin.is_ok_and(|n| n > 0),
            "b stopped serving after delete {id}"
        );
    }
    assert_served(&s, &["b".to_string()]);
}

/// Starts `create IMAGE ID` and SIGKILLs it the moment images/ID appears, before its daemon
/// serves. False if the create got to its end first.
fn kill_create_midway(s: &TestStore, image: &str, id: &str) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let mut child = s
        .cmd()
        .args(["create", image, id])
        .stdout(Stdio::null())
        .spawn()
        .expect("run nestfs");
    let dir = s.root().join("images").join(id);
    while !dir.exists() {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
    }
    let _ = child.kill();
    child.wait().unwrap().signal() == Some(libc::SIGKILL)
}

/// What a create killed after placing images/ID but before its daemon served leaves, made by
/// hand: the metadata of a real image and the `creating` mark, no daemon. (Without the mark
/// it is an image after a reboot, which stays.)
fn half_made(s: &TestStore, from: &str, id: &str) {
    let images = s.root().join("images");
    let dir = images.join(id);
    for d in ["upper", "work", "rootfs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let meta = std::fs::read_to_string(images.join(from).join("image.json")).unwrap();
    std::fs::write(dir.join("image.json"), meta.replace(from, id)).unwrap();
    std::fs::write(dir.join("creating"), "").unwrap();
}

fn listed(s: &TestStore) -> Vec<String> {
    let list = s.run(&["list", "--json"]).ok().json();
    let ids = list.as_array().unwrap().iter();
    ids.map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// Issue 17, fourth bug: a create killed after its image dir was in place but before its
/// daemon served left an image listed as not-mounted that blocked its id for good.
#[test]
fn an_image_a_killed_create_left_is_swept_by_the_next_command() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("busybox");
    s.create(&image, "base");
    let killed = (0..10)
        .map(|n| format!("k{n}"))
        .find(|id| kill_create_midway(&s, &image, id))
        .expect("never caught a create between placing its image and serving it");
    eprintln!("killed the create of {killed} midway");
    half_made(&s, "base", "h");
    assert_eq!(listed(&s), ["base"], "half-made images are listed");
    for id in [killed.as_str(), "h"] {
        s.create(&image, id);
    }
    let mut want = vec!["base".to_string(), "h".into(), killed.clone()];
    want.sort();
    assert_served(&s, &want);

    // clean sweeps debris it meets; delete removes it when asked.
    half_made(&s, "base", "c");
    s.run(&["clean"]).ok();
    assert!(!s.root().join("images/c").exists(), "clean left debris");
    half_made(&s, "base", "d");
    s.run(&["delete", "d"]).ok();
    assert!(!s.root().join("images/d").exists(), "delete left debris");
    assert_served(&s, &want);
    assert_eq!(debris(&s), Vec::<String>::new(), "debris left");
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text:?}"))..];
    let digits: String = rest[label.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {label:?} in {text:?}"))
}

/// Issue 17, fifth bug: `create` on a full store said "layer exceeds the allowed size of 0
/// bytes"; it says the filesystem is full, with the bytes free and needed, and leaves nothing.
#[test]
fn create_on_a_full_store_says_its_filesystem_is_full() {
    require_root_fuse!();
    let s = TestStore::uninitialised();
    let size = 3 << 20;
    let _fs = common::Tmpfs::mount(&s.root(), size);
    s.run(&["init-store"]).ok();
    let big = common::tarball(s.dir.path(), &[("big", 6 << 20)]);
    let big = big.to_str().unwrap();
    let mut cases = vec![
        // Four layers that unpack to 4 MiB.
        ("4mb-image", oci("4mb-image")),
        ("6 MiB tarball", big.into()),
    ];
    cases.push(("6 MiB tarball, store filled up", big.into()));
    for (what, image) in cases {
        if what.ends_with("filled up") {
            // Fill what is left, as the issue's store was.
            let _ = std::fs::write(s.root().join("filler"), vec![1u8; size as usize]);
        }
        let r = s.run(&["create", &image, "x"]);
        assert_eq!(r.code, 1, "{what}: {r:#?}");
        let msg = r.stdout.trim();
        assert!(
            msg.starts_with("the store's filesystem is full (ENOSPC)"),
            "{what}: {msg}"
        );
        let (free, needed) = (
            number_after(msg, "(ENOSPC): "),
            number_after(msg, "at least "),
        );
        assert!(free <= size && needed > free, "{what}: {msg}");
        eprintln!("{what}: {msg}");
        assert!(!s.root().join("images/x").exists(), "{what}: image left");
        assert_eq!(debris(&s), Vec::<String>::new(), "{what}: debris left");
    }
}

/// Whether processes here may lower their `oom_score_adj` below 0 (root without
/// CAP_SYS_RESOURCE, as in some containers, may not).
fn may_shun_oom_killer() -> bool {
    std::process::Command::new("sh")
        .args(["-c", "echo -1 > /proc/self/oom_score_adj"])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Issue 17, sixth point: as root, image daemons ask the OOM killer to take other processes
/// first (a killed daemon leaves its container's rootfs dead); where that is not allowed they
/// serve with the score they inherited.
#[test]
fn image_daemons_are_the_oom_killers_last_choice() {
    require_root_fuse!();
    let s = TestStore::new();
    let rootfs = s.create(&oci("busybox"), "o");
    let pids = daemons_for(s.dir.path());
    assert_eq!(pids.len(), 1);
    let adj = |pid: &str| -> i32 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        text.trim().parse().unwrap()
    };
    if may_shun_oom_killer() {
        assert!(
            adj(&pids[0].to_string()) < 0,
            "daemon's oom_score_adj not lowered"
        );
        // The keeper holding its connection is never the one to go.
        let keepers = common::keepers_for(s.dir.path());
        assert_eq!(keepers.len(), 1);
        assert_eq!(adj(&keepers[0].to_string()), -1000);
    } else {
        eprintln!("no CAP_SYS_RESOURCE here: checking only that the daemon serves regardless");
        assert_eq!(adj(&pids[0].to_string()), adj("self"));
        assert!(std::fs::read_dir(rootfs.join("bin")).unwrap().count() > 0);
    }
}

/// The daemon of a killed create may run before its pid file names it. Made here from a served
/// image: its daemon stopped (SIGSTOP: it answers nothing), its pid file gone and the image
/// marked as being created. The next create of that id must end that daemon, not leave it
/// beside the new one.
#[test]
fn a_half_made_images_daemon_goes_even_if_no_pid_file_names_it() {
    require_root_fuse!();
    let s = TestStore::new();
    let image = oci("busybox");
    s.create(&image, "s");
    let dir = s.root().join("images/s");
    let stray = daemons_for(s.dir.path())[0];
    common::signal(stray, rustix::process::Signal::STOP);
    std::fs::remove_file(dir.join("daemon.pid")).unwrap();
    std::fs::write(dir.join("creating"), "").unwrap();
    let start = Instant::now();
    run_bounded(&s, &["create", &image, "s"]).unwrap().ok();
    eprintln!("create over a stray daemon took {:?}", start.elapsed());
    // Gone, or dead and waiting for whoever adopted it to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{stray}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert!(
        matches!(state, None | Some("Z")),
        "the stray daemon {stray} still runs: {stat}"
    );
    assert_served(&s, &["s".to_string()]);
}

/// Issue 17, eighth point: a small layer that expands enormously (a gzip of zeros) is refused
/// as a decompression bomb at the entry that crosses the bound, before it is written, instead
/// of filling the store's filesystem first.
#[test]
fn a_decompression_bomb_is_refused_before_it_fills_the_store() {
    require_root_fuse!();
    let s = TestStore::new();
    let layout = s.dir.path().join("bomb");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    // 300 MiB of zeros in one file (sparse on disk here), gzipped to about 300 KB.
    let work = s.dir.path().join("bomb-work");
    std::fs::create_dir_all(&work).unwrap();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sh("truncate -s 300M zeros && tar -cf layer.tar zeros && rm zeros && gzip -1 layer.tar");
    let diff_id = format!(
        "sha256:{}",
        sh("gzip -dc layer.tar.gz | sha256sum | cut -d' ' -f1")
    );
    let layer = std::fs::read(work.join("layer.tar.gz")).unwrap();
    let put = |data: &[u8]| {
        let hex = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(data));
        std::fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let image = format!("oci://{}", layout.display());
    let r = s.run(&["create", &image, "bomb"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("refused as a decompression bomb") && r.stdout.contains(&layer_digest),
        "{r:#?}"
    );
    assert!(!s.root().join("images/bomb").exists());
    assert_eq!(
        std::fs::read_dir(s.root().join("volumes")).unwrap().count(),
        0
    );
    assert_eq!(debris(&s), Vec::<String>::new());
}
