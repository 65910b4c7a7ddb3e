//! The differential driver: the same layers under kernel overlayfs and under the binary under
//! test, the same calls on both, and checks that outcomes, merged trees and upper dirs agree and
//! that no lower layer changed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::Scratch;
use super::layers::{Format, Layer};
use super::mounts::{Impl, Mounted, Side};
use super::ops::Log;
use super::snapshot::{Detail, Snapshot, diff, snapshot, upper_shape};

pub struct Pair {
    pub kernel: Side,
    pub nestfs: Side,
    lowers_before: Vec<(PathBuf, Snapshot)>,
    kmnt: Option<Box<dyn Mounted>>,
    nmnt: Option<Box<dyn Mounted>>,
    // Last field: dropped after the mounts above.
    scratch: Scratch,
}

impl Pair {
    /// Builds both copies of `layers` (top first; the kernel's always in overlay format, the
    /// tested one in `format`) and mounts both read-write.
    pub fn new(layers: &[Layer], format: Format) -> Pair {
        Self::new_in(Scratch::new(), layers, format)
    }

    /// Like `new`, in a scratch dir the caller prepared (e.g. with canaries next to the sides,
    /// which live in `kernel/` and `nestfs/` under it).
    pub fn new_in(scratch: Scratch, layers: &[Layer], format: Format) -> Pair {
        Self::with_options(scratch, layers, format, "")
    }

    /// Like `new_in`, with more `-o` options for the tested binary.
    pub fn with_options(
        scratch: Scratch,
        layers: &[Layer],
        format: Format,
        options: &'static str,
    ) -> Pair {
        let kernel = Side::build(
            &scratch.sub("kernel"),
            Impl::Kernel,
            layers,
            Format::Overlay,
        );
        let mut nestfs = Side::build(&scratch.sub("nestfs"), Impl::Nestfs, layers, format);
        nestfs.options = options;
        let lowers_before = kernel
            .lowers
            .iter()
            .chain(&nestfs.lowers)
            .map(|l| (l.clone(), snapshot(l, Detail::Exact)))
            .collect();
        let mut pair = Pair {
            kernel,
            nestfs,
            lowers_before,
            kmnt: None,
            nmnt: None,
            scratch,
        };
        pair.mount();
        pair
    }

    fn mount(&mut self) {
        self.kmnt = Some(self.kernel.mount());
        self.nmnt = Some(self.nestfs.mount());
    }

    pub fn kroot(&self) -> &Path {
        self.kmnt.as_ref().expect("kernel mounted").root()
    }
    pub fn nroot(&self) -> &Path {
        self.nmnt.as_ref().expect("nestfs mounted").root()
    }

    /// Runs `script` on the kernel mount, then on the tested one; panics if any outcome differs.
    /// Returns the (agreed) log.
    pub fn run(&self, script: impl Fn(&Path, &mut Log) + Sync) -> Log {
        let mut k = Log::default();
        script(self.kroot(), &mut k);
        let n = run_guarded(self.nmnt.as_deref().expect("nestfs mounted"), &script);
        assert_logs_equal(&k, &n);
        k
    }

    /// Panics with a readable diff if the merged trees differ.
    pub fn compare_trees(&self, when: &str) {
        let k = snapshot(self.kroot(), Detail::Merged);
        let n = snapshot(self.nroot(), Detail::Merged);
        if let Some(d) = diff("kernel", &k, "nestfs", &n) {
            panic!("merged trees differ {when}:\n{d}");
        }
    }

    /// Panics if the two upper dirs hold different paths (after normalising whiteout formats).
    pub fn compare_uppers(&self, when: &str) {
        let k = upper_shape(&self.kernel.upper);
        let n = upper_shape(&self.nestfs.upper);
        if let Some(d) = diff("kernel upper", &k, "nestfs upper", &n) {
            panic!("upper dirs differ {when}:\n{d}");
        }
    }

    pub fn unmount(&mut self) {
        self.nmnt = None;
        self.kmnt = None;
    }

    /// Unmounts both and mounts them again over the same upper dirs.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Final checks: merged trees, upper dirs, then (unmounted) every lower unchanged. Hands back
    /// the scratch dir so callers can check what else lives there before it is removed.
    pub fn finish(mut self) -> Scratch {
        self.compare_trees("at the end");
        self.compare_uppers("at the end");
        self.remount();
        self.compare_trees("after a remount");
        self.unmount();
        self.assert_lowers_unchanged();
        self.scratch
    }

    pub fn assert_lowers_unchanged(&self) {
        for (dir, before) in &self.lowers_before {
            let after = snapshot(dir, Detail::Exact);
            if let Some(d) = diff("before", before, "after", &after) {
                panic!("lower layer {} changed:\n{d}", dir.display());
            }
        }
    }
}

/// How long one script may run on the tested mount before the daemon is declared stuck.
const STUCK: Duration = Duration::from_secs(120);

/// Runs `script` on a helper thread; if it does not finish in `STUCK`, aborts the mount (which
/// fails every pending request, so the thread returns) and panics.
fn run_guarded(mount: &dyn Mounted, script: &(impl Fn(&Path, &mut Log) + Sync)) -> Log {
    let root = mount.root();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let worker = s.spawn(move || {
            let mut log = Log::default();
            script(root, &mut log);
            let _ = tx.send(());
            log
        });
        if rx.recv_timeout(STUCK).is_err() && !worker.is_finished() {
            mount.abort();
            let _ = worker.join();
            panic!("the tested daemon did not answer within {STUCK:?}; connection aborted");
        }
        worker
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

pub fn assert_logs_equal(k: &Log, n: &Log) {
    let mut report = String::new();
    let len = k.lines.len().max(n.lines.len());
    for i in 0..len {
        let (a, b) = (k.lines.get(i), n.lines.get(i));
        if a != b {
            report.push_str(&format!(
                "  #{i}\n    kernel: {}\n    nestfs: {}\n",
                a.map_or("<none>", |s| s.as_str()),
                b.map_or("<none>", |s| s.as_str())
            ));
        }
    }
    assert!(report.is_empty(), "call outcomes differ:\n{report}");
}

/// One differential case: layers, the script, then all final checks.
pub fn case(layers: &[Layer], format: Format, script: impl Fn(&Path, &mut Log) + Sync) {
    case_with(layers, format, "", script);
}

/// [`case`] with more `-o` options for the tested binary.
pub fn case_with(
    layers: &[Layer],
    format: Format,
    options: &'static str,
    script: impl Fn(&Path, &mut Log) + Sync,
) {
    let pair = Pair::with_options(Scratch::new(), layers, format, options);
    pair.run(script);
    pair.finish();
}
