//! Id mappings: the layers hold the image's own ids ("inside", e.g. root is 0) and the mount
//! shows them as host ids ("outside", e.g. 0 -> 100000), so one unpacked layer serves stores
//! with any mapping and nothing is chowned. Ids with no mapping show as the overflow id.
//!
//! The upper dir holds outside ids (what the container's processes are on the host, as with
//! GrootFS), unless `map_upper` (fuse-overlayfs's semantics for `-o uidmapping=`) keeps inside
//! ids there too.

use std::io;

/// What unmapped ids show as (the kernel's overflow uid/gid).
pub const OVERFLOW: u32 = 65534;

/// `len` ids from `inside` on show as `len` ids from `outside`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub len: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Store inside ids in the upper dir as well (fuse-overlayfs's `uidmapping=` semantics).
    pub map_upper: bool,
}

/// Parses fuse-overlayfs's `INSIDE:OUTSIDE:LEN[:INSIDE:OUTSIDE:LEN...]`.
pub fn parse(spec: &str) -> Result<Vec<IdRange>, String> {
    let nums: Vec<u32> = spec
        .split(':')
        .map(|n| n.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{spec:?}: expected INSIDE:OUTSIDE:LEN[:...] with numbers"))?;
    if nums.is_empty() || !nums.len().is_multiple_of(3) {
        return Err(format!("{spec:?}: expected triples INSIDE:OUTSIDE:LEN"));
    }
    let ranges: Vec<IdRange> = nums
        .chunks(3)
        .map(|c| IdRange {
            inside: c[0],
            outside: c[1],
            len: c[2],
        })
        .collect();
    for r in &ranges {
        if r.len == 0
            || r.inside.checked_add(r.len - 1).is_none()
            || r.outside.checked_add(r.len - 1).is_none()
        {
            return Err(format!("{spec:?}: range {r:?} is empty or overflows"));
        }
    }
    Ok(ranges)
}

fn outside(ranges: &[IdRange], id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|r| id >= r.inside && id - r.inside < r.len)
        .map_or(OVERFLOW, |r| r.outside + (id - r.inside))
}

fn inside(ranges: &[IdRange], id: u32) -> io::Result<u32> {
    // u32::MAX means "leave unchanged" to chown.
    if ranges.is_empty() || id == u32::MAX {
        return Ok(id);
    }
    ranges
        .iter()
        .find(|r| id >= r.outside && id - r.outside < r.len)
        .map(|r| r.inside + (id - r.outside))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

impl IdMap {
    /// The ids a layer's (uid, gid) show as.
    pub fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        (outside(&self.uids, uid), outside(&self.gids, gid))
    }

    /// The ids to write into the upper dir for ids the kernel asked for (EINVAL if the mapping
    /// has no inside id for them).
    pub fn stored(&self, uid: u32, gid: u32) -> io::Result<(u32, u32)> {
        if !self.map_upper {
            return Ok((uid, gid));
        }
        Ok((inside(&self.uids, uid)?, inside(&self.gids, gid)?))
    }

    /// The ids a lower object's copy gets in the upper dir.
    pub fn copied(&self, uid: u32, gid: u32) -> (u32, u32) {
        if self.map_upper {
            (uid, gid)
        } else {
            self.shown(uid, gid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garden_mapping_and_overflow() {
        let m = IdMap {
            uids: parse("0:4294967294:1:1:1:4294967293").unwrap(),
            gids: parse("0:100000:65536").unwrap(),
            map_upper: false,
        };
        assert_eq!(m.shown(0, 0), (4294967294, 100000));
        assert_eq!(m.shown(1000, 70000), (1000, OVERFLOW));
        assert_eq!(m.stored(5, 5).unwrap(), (5, 5));
        assert_eq!(m.copied(0, 1), (4294967294, 100001));
        let fo = IdMap {
            map_upper: true,
            ..m
        };
        assert_eq!(fo.stored(4294967294, 100001).unwrap(), (0, 1));
        assert_eq!(fo.stored(u32::MAX, 100000).unwrap(), (u32::MAX, 0));
        assert!(fo.stored(5, 7).is_err());
    }

    #[test]
    fn bad_specs() {
        for s in ["", "0:1", "0:1:0", "a:b:c", "4294967295:0:2", "0:1:2:3"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
