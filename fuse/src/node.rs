//! The inode table. A node knows where its object lives (its parent node and name, plus the
//! layer holding the top copy), never a full path: paths are walked once, at lookup, through
//! directory fds held by the parent.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// The FUSE root's node id.
pub const ROOT: u64 = 1;

/// One layer's copy of a directory, held open (`O_PATH`) so children resolve beneath it.
#[derive(Clone, Debug)]
pub struct LayerDir {
    pub layer: usize,
    pub fd: Arc<OwnedFd>,
    /// Whether `.wh.*` names here are OCI whiteout markers (always in lower layers; in the
    /// upper dir only when whiteouts are written that way) rather than ordinary names.
    pub oci: bool,
}

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: CString,
    /// The other names of a hard-linked non-directory that lookups and links have met. The
    /// kernel may go on using a name it cached while the file had one link, so when the name
    /// above goes away (unlinked, renamed over) the node lives on under one of these.
    pub aliases: Vec<(u64, CString)>,
    /// Lookups the kernel holds; the node is dropped when they are all forgotten.
    pub lookups: u64,
    /// For directories: the layers merged into it, top first, cut at the first opaque one.
    /// Empty for anything else.
    pub dirs: Vec<LayerDir>,
    /// For non-directories: the layer holding the visible copy.
    pub layer: usize,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// The top layer of the object (for a directory, its topmost copy).
    pub fn top_layer(&self) -> usize {
        self.dirs.first().map_or(self.layer, |d| d.layer)
    }

    pub fn dir_in(&self, layer: usize) -> Option<Arc<OwnedFd>> {
        self.dirs
            .iter()
            .find(|d| d.layer == layer)
            .map(|d| d.fd.clone())
    }
}

#[derive(Default)]
pub struct Table {
    nodes: Mutex<HashMap<u64, Node>>,
}

impl Table {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a lookup of `ino` at `parent`/`name`, updating where the object lives.
    pub fn remember(
        &self,
        ino: u64,
        parent: u64,
        name: CString,
        dirs: Vec<LayerDir>,
        layer: usize,
    ) {
        let mut nodes = self.lock();
        let node = nodes.entry(ino).or_insert_with(|| Node {
            parent,
            name: name.clone(),
            aliases: Vec::new(),
            lookups: 0,
            dirs: Vec::new(),
            layer,
        });
        if dirs.is_empty() {
            node.aliases.retain(|(p, n)| (*p, n) != (parent, &name));
            if (node.parent, &node.name) != (parent, &name) {
                let old = std::mem::replace(&mut node.name, name);
                node.aliases.push((node.parent, old));
            }
        } else {
            node.name = name;
        }
        node.parent = parent;
        node.dirs = dirs;
        node.layer = layer;
        node.lookups += 1;
    }

    /// `parent`/`name` no longer names `ino` (unlinked or replaced): another known name, if
    /// any, takes its place.
    pub fn unlinked(&self, ino: u64, parent: u64, name: &CStr) {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(&ino) else {
            return;
        };
        if (node.parent, node.name.as_c_str()) != (parent, name) {
            node.aliases
                .retain(|(p, n)| (*p, n.as_c_str()) != (parent, name));
        } else if let Some((p, n)) = node.aliases.pop() {
            (node.parent, node.name) = (p, n);
        }
    }

    /// `ino` moved from `from` to `to`; its other names stay.
    pub fn renamed(&self, ino: u64, from: (u64, &CStr), to: (u64, &CStr)) {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(&ino) else {
            return;
        };
        let to = (to.0, to.1.to_owned());
        if (node.parent, node.name.as_c_str()) == from || node.is_dir() {
            (node.parent, node.name) = to;
        } else if let Some(a) = node
            .aliases
            .iter_mut()
            .find(|(p, n)| (*p, n.as_c_str()) == from)
        {
            *a = to;
        } else {
            let old = std::mem::replace(&mut node.name, to.1);
            node.aliases
                .push((std::mem::replace(&mut node.parent, to.0), old));
        }
    }

    /// Keeps `ino` whatever the kernel forgets: for nodes found again after a takeover, whose
    /// lookups the kernel holds are unknown.
    pub fn keep(&self, ino: u64) {
        if let Some(n) = self.lock().get_mut(&ino) {
            n.lookups = u64::MAX / 2;
        }
    }

    /// Drops `n` lookups of `ino`; true when that freed its node.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let mut nodes = self.lock();
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                nodes.remove(&ino);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// A file's node as the table holds it: (parent, name) and its aliases.
    fn names(t: &Table, ino: u64) -> (u64, String, Vec<(u64, String)>) {
        let nodes = t.lock();
        let n = &nodes[&ino];
        let alias = |(p, s): &(u64, CString)| (*p, s.to_string_lossy().into_owned());
        (
            n.parent,
            n.name.to_string_lossy().into_owned(),
            n.aliases.iter().map(alias).collect(),
        )
    }

    /// `ln a b; rm b`: the name the kernel cached first (a) must go on resolving.
    #[test]
    fn a_hard_link_removed_leaves_the_first_name() {
        let t = Table::default();
        t.remember(10, ROOT, c("a"), Vec::new(), 1);
        t.remember(10, ROOT, c("b"), Vec::new(), 1);
        assert_eq!(names(&t, 10), (ROOT, "b".into(), vec![(ROOT, "a".into())]));
        t.unlinked(10, ROOT, &c("b"));
        assert_eq!(names(&t, 10), (ROOT, "a".into(), vec![]));
    }

    /// Removing a name the node is not known by now drops only that alias.
    #[test]
    fn unlinking_an_alias_keeps_the_current_name() {
        let t = Table::default();
        for name in ["a", "b", "c"] {
            t.remember(10, ROOT, c(name), Vec::new(), 0);
        }
        t.unlinked(10, ROOT, &c("a"));
        assert_eq!(names(&t, 10), (ROOT, "c".into(), vec![(ROOT, "b".into())]));
        // Met again by a known name: not recorded twice.
        t.remember(10, ROOT, c("b"), Vec::new(), 0);
        assert_eq!(names(&t, 10), (ROOT, "b".into(), vec![(ROOT, "c".into())]));
    }

    /// `ln a b; mv y b`: b is y's now, so a's node no longer answers for b.
    #[test]
    fn a_name_renamed_over_no_longer_belongs_to_the_old_node() {
        let t = Table::default();
        t.remember(10, ROOT, c("a"), Vec::new(), 0);
        t.remember(10, ROOT, c("b"), Vec::new(), 0);
        t.remember(11, ROOT, c("y"), Vec::new(), 0);
        t.unlinked(10, ROOT, &c("b"));
        t.renamed(11, (ROOT, &c("y")), (ROOT, &c("b")));
        assert_eq!(names(&t, 10), (ROOT, "a".into(), vec![]));
        assert_eq!(names(&t, 11), (ROOT, "b".into(), vec![]));
    }

    /// Renaming one of a file's names moves that name only.
    #[test]
    fn renaming_an_alias_moves_only_that_name() {
        let t = Table::default();
        t.remember(10, ROOT, c("a"), Vec::new(), 0);
        t.remember(10, 5, c("b"), Vec::new(), 0);
        t.renamed(10, (ROOT, &c("a")), (7, &c("z")));
        assert_eq!(names(&t, 10), (5, "b".into(), vec![(7, "z".into())]));
    }

    /// Directories have one name: the last lookup's.
    #[test]
    fn a_directory_has_no_aliases() {
        let t = Table::default();
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let d = LayerDir {
            layer: 0,
            fd: Arc::new(dir.into()),
            oci: false,
        };
        t.remember(20, ROOT, c("d"), vec![d.clone()], 0);
        t.remember(20, 3, c("e"), vec![d], 0);
        assert_eq!(names(&t, 20), (3, "e".into(), vec![]));
    }

    /// Memory stays bounded: a node goes once the kernel forgets every lookup; the root stays.
    #[test]
    fn forget_frees_a_node_after_its_last_lookup() {
        let t = Table::default();
        t.remember(10, ROOT, c("a"), Vec::new(), 0);
        t.remember(10, ROOT, c("a"), Vec::new(), 0);
        t.forget(10, 1);
        assert!(t.lock().contains_key(&10));
        t.forget(10, 1);
        assert!(!t.lock().contains_key(&10));
        t.remember(ROOT, ROOT, c(""), Vec::new(), 0);
        t.forget(ROOT, 100);
        assert!(t.lock().contains_key(&ROOT));
    }
}
