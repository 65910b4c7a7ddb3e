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

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut nodes = self.lock();
        if let Some(node) = nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                nodes.remove(&ino);
            }
        }
    }
}
