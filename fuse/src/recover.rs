//! Node ids the kernel got from an earlier server of the connection (see `handover`). Ids are
//! made from the layers' inode numbers (`present_ino`, `upper_ino`, the origin a copy-up
//! records), so the same tree gives the same ids: a node this server does not know is found by
//! walking the merged tree once, then looked up along its path like any other.
//!
//! What cannot be found this way: a file removed while the kernel still held it (open, or a
//! process's cwd), and the ids an earlier server gave for this mount only (a copy-up that
//! split a name from a shared inode, special files with several names). Requests for those
//! fail with ENOENT.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use crate::dir;
use crate::node::{LayerDir, ROOT};
use crate::overlay::Overlay;

/// Deeper than any real tree: the walk stops there rather than exhaust the stack.
const MAX_DEPTH: usize = 1024;

#[derive(Default)]
pub struct Recovery {
    /// Node id -> (parent id, name): one walk of the whole tree, made on first need.
    index: OnceLock<HashMap<u64, (u64, CString)>>,
}

impl Overlay {
    /// Makes sure node `ino` is in the table, when this server took over the connection and
    /// the node can be found. Nodes found so are kept for the server's life: how many lookups
    /// the kernel holds of them is unknown.
    pub fn known(&self, ino: u64) {
        let Some(r) = &self.recovery else {
            return;
        };
        if self.nodes.lock().contains_key(&ino) {
            return;
        }
        let index = r.index.get_or_init(|| self.walk());
        // The path up to a node the table has (the root at least), found bottom up.
        let mut path = Vec::new();
        let mut at = ino;
        while !self.nodes.lock().contains_key(&at) {
            let Some((parent, name)) = index.get(&at) else {
                tracing::warn!("after a takeover, node {ino:#x} is nowhere in the tree");
                return;
            };
            path.push((*parent, name, at));
            at = *parent;
            if path.len() > MAX_DEPTH {
                return;
            }
        }
        for (parent, name, want) in path.into_iter().rev() {
            match self.lookup(parent, name) {
                Ok(a) if a.ino.0 == want => self.nodes.keep(want),
                _ => {
                    tracing::warn!("after a takeover, node {ino:#x} changed since the walk");
                    return;
                }
            }
        }
    }

    /// [`Self::known`] for the object `parent`/`name` names (a request that changes a name
    /// gives no node id for it).
    pub fn known_child(&self, parent: u64, name: &CStr) {
        if self.recovery.is_none() {
            return;
        }
        self.known(parent);
        let Ok(found) = self.find(parent, name) else {
            return;
        };
        if !self.nodes.lock().contains_key(&found.ino) {
            let ino = found.ino;
            self.remember(parent, name, found);
            self.nodes.keep(ino);
        }
    }

    fn walk(&self) -> HashMap<u64, (u64, CString)> {
        let mut index = HashMap::new();
        if let Ok(root) = self.dirs_of(ROOT) {
            self.walk_dir(ROOT, &root, 0, &mut index);
        }
        index
    }

    fn walk_dir(
        &self,
        ino: u64,
        dirs: &[LayerDir],
        depth: usize,
        index: &mut HashMap<u64, (u64, CString)>,
    ) {
        let Ok(list) = dir::list(dirs) else {
            return;
        };
        for e in list {
            let Ok(found) = self.resolve_from(dirs, &e.name, e.at) else {
                continue;
            };
            // A file with several names is found by its first.
            if found.ino == ROOT || index.contains_key(&found.ino) {
                continue;
            }
            index.insert(found.ino, (ino, e.name));
            if !found.dirs.is_empty() && depth < MAX_DEPTH {
                self.walk_dir(found.ino, &found.dirs, depth + 1, index);
            }
        }
    }
}
