//! Deterministic OCI image layouts for nestfs's tests and benchmarks, built from files on the
//! machine (Debian's busybox-static) and generated content; nothing is downloaded.
//!
//! Each image in [`NAMES`] has the shape of an image GrootFS's and Garden's tests use: one
//! busybox layer, many small layers, OCI whiteouts and opaque dirs, hard links, setuid files,
//! non-writable files and dirs, an empty-ish image, uncompressed, gzip and zstd layers. The same
//! inputs give the same bytes (fixed times, owners and compression settings), so digests are
//! stable and a layout built once is reused from the cache dir.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// The busybox binary the images are made of (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Every file's mtime: 2020-01-01T00:00:00Z.
const MTIME: u64 = 1_577_836_800;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The images [`layout`] can build.
pub const NAMES: &[&str] = &[
    "busybox",
    "generated",
    "garden-rootfs",
    "garden-busybox",
    "four-layers",
    "hardlink",
    "non-writable-file",
    "non-writable-folder",
    "opq-whiteouts-busybox",
    "empty",
    "tar-layer",
    "4mb-image",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    Char(u32, u32),
    Fifo,
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    owner: (u64, u64),
}

/// One layer: tar entries in order, and how the blob is compressed.
#[derive(Clone, Debug)]
pub struct Layer {
    entries: Vec<Entry>,
    compression: Compression,
}

impl Layer {
    pub fn new(compression: Compression) -> Layer {
        Layer {
            entries: Vec::new(),
            compression,
        }
    }

    pub fn gzip() -> Layer {
        Layer::new(Compression::Gzip)
    }

    fn push(mut self, path: &str, kind: Kind, mode: u32) -> Layer {
        self.entries.push(Entry {
            path: path.to_string(),
            kind,
            mode,
            owner: (0, 0),
        });
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.push(path, Kind::Dir, mode)
    }

    pub fn file(self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Layer {
        self.push(path, Kind::File(data.into()), mode)
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Kind::Symlink(target.into()), 0o777)
    }

    /// A hard link at `path` to the earlier entry `target` of this layer.
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Kind::Hardlink(target.into()), 0o644)
    }

    pub fn char_dev(self, path: &str, mode: u32, major: u32, minor: u32) -> Layer {
        self.push(path, Kind::Char(major, minor), mode)
    }

    pub fn fifo(self, path: &str, mode: u32) -> Layer {
        self.push(path, Kind::Fifo, mode)
    }

    /// An OCI whiteout of `path` (`DIR/.wh.NAME`).
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, 0o600, Vec::new())
    }

    /// Marks the directory `dir` opaque (`DIR/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Layer {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o600, Vec::new())
    }

    /// Gives the last entry an owner.
    pub fn owned(mut self, uid: u64, gid: u64) -> Layer {
        self.entries.last_mut().expect("an entry to own").owner = (uid, gid);
        self
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.owner.0);
            h.set_gid(e.owner.1);
            h.set_mtime(MTIME);
            h.set_size(0);
            let data: &[u8] = match &e.kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    &[]
                }
                Kind::File(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    d
                }
                Kind::Symlink(t) | Kind::Hardlink(t) => {
                    h.set_entry_type(if matches!(e.kind, Kind::Symlink(_)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    b.append_link(&mut h, &e.path, t).expect("tar link");
                    continue;
                }
                Kind::Char(major, minor) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_device_major(*major).expect("device major");
                    h.set_device_minor(*minor).expect("device minor");
                    &[]
                }
                Kind::Fifo => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    &[]
                }
            };
            b.append_data(&mut h, &e.path, data).expect("tar entry");
        }
        b.into_inner().expect("tar")
    }

    /// The blob as stored in a layout or pushed to a registry.
    pub fn blob(&self) -> Vec<u8> {
        compress(&self.tar(), self.compression)
    }

    fn media_type(&self) -> &'static str {
        match self.compression {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        // No name and mtime 0 in the gzip header: the same bytes every time.
        Compression::Gzip => {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::default());
            gz.write_all(tar).expect("gzip");
            gz.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// Undoes a layer blob's compression (recognised by its magic bytes).
pub fn decompress(blob: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(blob).read_to_end(&mut out)?;
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(blob)?;
    } else {
        out = blob.to_vec();
    }
    Ok(out)
}

/// An image: layers bottom first, the config's Env, and the tag the layout's index gives it.
#[derive(Clone, Debug)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub env: Option<Vec<String>>,
    pub tag: Option<String>,
}

impl Image {
    fn new(layers: Vec<Layer>) -> Image {
        Image {
            layers,
            env: Some(vec![PATH_ENV.into()]),
            tag: Some("latest".into()),
        }
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes `data` as a blob of the layout at `dir`; returns its descriptor.
fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> io::Result<serde_json::Value> {
    let digest = sha256(data);
    std::fs::write(
        dir.join("blobs/sha256").join(&digest["sha256:".len()..]),
        data,
    )?;
    Ok(json!({"mediaType": media_type, "digest": digest, "size": data.len()}))
}

/// Writes `image` as an OCI layout into the empty or missing directory `dir`.
pub fn write_layout(dir: &Path, image: &Image) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for l in &image.layers {
        let tar = l.tar();
        diff_ids.push(sha256(&tar));
        layers.push(put_blob(
            dir,
            l.media_type(),
            &compress(&tar, l.compression),
        )?);
    }
    let mut config = json!({
        "created": "2020-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(env) = &image.env {
        config["config"]["Env"] = json!(env);
    }
    let config = put_blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config)?,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let mut desc = put_blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest)?,
    )?;
    if let Some(tag) = &image.tag {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    }
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)
}

/// The layer tars of the layout's first manifest, bottom first, decompressed.
pub fn layer_tars(layout: &Path) -> io::Result<Vec<Vec<u8>>> {
    let read_json = |p: PathBuf| -> io::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(p)?)?)
    };
    let blob = |d: &serde_json::Value| {
        let d = d.as_str().unwrap_or_default();
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read_json(layout.join("index.json"))?;
    let manifest = read_json(blob(&index["manifests"][0]["digest"]))?;
    let mut tars = Vec::new();
    for l in manifest["layers"].as_array().into_iter().flatten() {
        tars.push(decompress(&std::fs::read(blob(&l["digest"]))?)?);
    }
    Ok(tars)
}

/// Busybox's applets, in a stable order (`busybox --list`).
fn applets() -> Vec<String> {
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("run {BUSYBOX} (apt-get install busybox-static): {e}"));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| !n.is_empty() && *n != "busybox" && !n.contains('/'))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn busybox_bytes() -> Vec<u8> {
    std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX} (apt-get install busybox-static): {e}"))
}

/// A root filesystem of busybox: the binary, every applet as a hard link to it (as Docker's
/// busybox images have them), and the usual top-level directories.
pub fn busybox_layer() -> Layer {
    let mut l = Layer::gzip()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, busybox_bytes());
    for a in applets() {
        l = l.hardlink(&format!("bin/{a}"), "bin/busybox");
    }
    l.dir("dev", 0o755)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )
        .file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n")
        .dir("home", 0o755)
        .dir("proc", 0o555)
        .dir("root", 0o700)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .dir("usr", 0o755)
        .dir("usr/sbin", 0o755)
        .dir("var", 0o755)
        .dir("var/spool", 0o755)
        .dir("var/spool/mail", 0o755)
        .owned(8, 8)
        .dir("var/www", 0o755)
}

/// `len` bytes of pseudo-random (but fixed) data.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap and the same everywhere.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A one-layer tree of generated content: nested dirs, files of many sizes, relative and
/// absolute symlinks, a fifo and a device node, several owners and modes.
fn generated() -> Image {
    let mut l = Layer::gzip().dir("data", 0o755);
    for d in 0..8 {
        l = l.dir(&format!("data/d{d}"), 0o755);
        for f in 0..12 {
            let size = [0, 1, 100, 4095, 4096, 4097, 65536, 200_000][(d + f) % 8];
            l = l.file(
                &format!("data/d{d}/f{f}"),
                0o644,
                noise((d * 100 + f) as u64, size),
            );
        }
    }
    l.dir("etc", 0o755)
        .file("etc/hostname", 0o644, "generated\n")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .symlink("data/latest", "d7/f3")
        .dir("dev", 0o755)
        .char_dev("dev/null", 0o666, 1, 3)
        .fifo("dev/pipe", 0o600)
        .dir("home", 0o755)
        .dir("home/alice", 0o750)
        .owned(1000, 1000)
        .file("home/alice/notes", 0o600, "alice's\n")
        .owned(1000, 1000)
        .dir("srv", 0o2775)
        .owned(0, 50)
        .file("srv/run.sh", 0o4755, "#!/bin/sh\necho run\n")
        .into_image()
}

impl Layer {
    fn into_image(self) -> Image {
        Image::new(vec![self])
    }
}

/// The 32 layers of Garden's test image: busybox, then small layers that override, whiteout,
/// make opaque, hard-link, chmod and re-own what is below them.
fn garden_rootfs() -> Image {
    let etc = |group: &str| {
        Layer::gzip()
            .dir("etc", 0o755)
            .file("etc/group", 0o664, group.to_string())
            .file("etc/group-", 0o664, group.to_string())
    };
    let users = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    let layers = vec![
        busybox_layer(),
        Layer::gzip()
            .dir("etc", 0o755)
            .file("etc/seed", 0o644, "1\n"),
        Layer::gzip()
            .dir("etc", 0o755)
            .file("etc/seed", 0o644, "2\n"),
        Layer::new(Compression::None).dir("bin", 0o755).file(
            "bin/usemem",
            0o755,
            "#!/bin/sh\necho usemem\n",
        ),
        Layer::gzip()
            .dir("bin", 0o755)
            .file("bin/usemem-with-setuid", 0o755, "#!/bin/sh\n"),
        Layer::gzip()
            .dir("bin", 0o755)
            .file("bin/usemem-with-setuid", 0o4755, "#!/bin/sh\n"),
        Layer::gzip().file("base-image-version.txt", 0o644, "1\n"),
        etc("root:x:0:\nalice:x:1000:\n")
            .file("etc/passwd", 0o664, users)
            .file("etc/passwd-", 0o664, users)
            .dir("home", 0o755)
            .dir("home/alice", 0o755)
            .owned(1000, 1000),
        Layer::gzip().file("hello", 0o644, "hello\n"),
        Layer::gzip().file("allo", 0o644, "allo\n"),
        hardlinks(Layer::gzip()),
        Layer::gzip()
            .dir("test", 0o755)
            .file("test/hello", 0o555, "hello 1\n"),
        Layer::gzip()
            .dir("test", 0o755)
            .file("test/hello", 0o555, "hello 2\n"),
        Layer::gzip()
            .dir("test", 0o555)
            .file("test/hello", 0o555, "hello 3\n"),
        Layer::gzip().dir("var", 0o755).dir("var/somedir", 0o755),
        Layer::gzip()
            .dir("var", 0o755)
            .opaque("var")
            .file("var/istillexist", 0o644, "yes\n"),
        Layer::gzip()
            .dir("test", 0o555)
            .dir("test/foo", 0o755)
            .file("test/foo/1", 0o644, "1\n")
            .file("test/foo/2", 0o644, "2\n")
            .dir("test/foo/bar", 0o755)
            .file("test/foo/bar/3", 0o644, "3\n"),
        Layer::gzip()
            .dir("test", 0o555)
            .dir("test/foo", 0o755)
            .whiteout("test/foo/1")
            .whiteout("test/foo/2")
            .whiteout("test/foo/bar"),
        Layer::gzip().file("file-to-be-deleted", 0o644, "bye\n"),
        Layer::gzip().file("existing-file", 0o644, "here\n"),
        Layer::gzip().dir("folder", 0o755),
        Layer::gzip().whiteout("file-to-be-deleted"),
        Layer::gzip().whiteout("folder"),
        Layer::gzip()
            .dir("etc", 0o755)
            .file("etc/link-source", 0o644, "source\n"),
        Layer::gzip()
            .dir("tmp", 0o1777)
            .file("tmp/symlink", 0o644, "a file first\n"),
        Layer::gzip()
            .dir("tmp", 0o1777)
            .symlink("tmp/symlink", "/etc/link-source"),
        Layer::new(Compression::Zstd).dir("bin", 0o755).file(
            "bin/throttled-or-not",
            0o755,
            "#!/bin/sh\necho not\n",
        ),
        etc("root:x:0:\nalice:x:1000:\nbob:x:1001:\n"),
        etc("root:x:0:\nalice:x:1000:\nbob:x:1001:\ncarol:x:1002:\n"),
        etc("root:x:0:\nbob:x:1001:\n")
            .file("etc/passwd", 0o664, "root:x:0:0:root:/root:/bin/sh\n")
            .file("etc/passwd-", 0o664, "root:x:0:0:root:/root:/bin/sh\n"),
        etc("root:x:0:\nbob:x:1001:\ndave:x:1003:\n"),
        Layer::gzip().dir("etc", 0o755).dir("etc/foo", 0o755),
    ];
    Image {
        env: Some(vec![
            format!("{PATH_ENV}:/from-dockerfile"),
            "TEST=second-test-from-dockerfile:test-from-dockerfile".into(),
        ]),
        ..Image::new(layers)
    }
}

/// Two files with a hard link each, one link in a nested directory.
fn hardlinks(l: Layer) -> Layer {
    l.file("file", 0o644, "file\n")
        .file("file-link2", 0o644, "file 2\n")
        .dir("first", 0o755)
        .dir("first/second", 0o755)
        .hardlink("first/second/file-link", "file")
        .hardlink("first/second/file2", "file-link2")
}

/// Busybox with a setuid binary and a setgid home dir owned by a user, no Env in its config.
fn garden_busybox() -> Image {
    let mut l = Layer::gzip()
        .file(".dockerenv", 0o755, Vec::new())
        .dir("bin", 0o775)
        .file("bin/busybox", 0o4755, busybox_bytes());
    for a in [
        "ash", "cat", "dd", "echo", "id", "ls", "mkdir", "rm", "sh", "touch", "whoami",
    ] {
        l = l.symlink(&format!("bin/{a}"), "busybox");
    }
    let l = l
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .dir("home", 0o755)
        .dir("home/alice", 0o2755)
        .owned(1000, 1000)
        .dir("tmp", 0o1777);
    Image {
        env: None,
        ..l.into_image()
    }
}

/// Builds the image called `name` (one of [`NAMES`]).
pub fn image(name: &str) -> Option<Image> {
    let with_busybox = |l: Layer| Image::new(vec![busybox_layer(), l]);
    Some(match name {
        "busybox" => Image {
            tag: None,
            ..busybox_layer().into_image()
        },
        "generated" => generated(),
        "garden-rootfs" => Image {
            tag: None,
            ..garden_rootfs()
        },
        "garden-busybox" => garden_busybox(),
        "four-layers" => Image::new(vec![
            busybox_layer(),
            Layer::gzip().file("file-1", 0o644, "1\n"),
            Layer::gzip().file("file-2", 0o644, "2\n"),
            Layer::gzip().file("file-3", 0o644, "3\n"),
        ]),
        "hardlink" => with_busybox(hardlinks(Layer::gzip())),
        "non-writable-file" => Image::new(vec![
            busybox_layer(),
            Layer::gzip()
                .dir("test", 0o755)
                .file("test/hello", 0o555, "hello\n"),
            Layer::gzip()
                .dir("test", 0o755)
                .file("test/hello", 0o555, "hello again\n"),
        ]),
        "non-writable-folder" => with_busybox(Layer::gzip().dir("test", 0o555).file(
            "test/hello",
            0o644,
            "hello\n",
        )),
        "opq-whiteouts-busybox" => with_busybox(
            Layer::gzip()
                .dir("var", 0o755)
                .file("var/istillexist", 0o644, "yes\n")
                .opaque("var"),
        ),
        "empty" => Image {
            tag: Some("v0.1.1".into()),
            ..Image::new(vec![
                Layer::gzip().file("hello", 0o644, Vec::new()),
                Layer::gzip().file("allo", 0o644, Vec::new()),
            ])
        },
        "tar-layer" => Image {
            env: None,
            ..Layer::new(Compression::None)
                .file("pokemon.txt", 0o644, "pikachu\n")
                .into_image()
        },
        "4mb-image" => Image::new(vec![
            Layer::new(Compression::None).file("2mb-file-1", 0o644, noise(1, 2 << 20)),
            Layer::gzip().file("1.5mb-file-2", 0o644, vec![0u8; 1536 << 10]),
            Layer::new(Compression::None).file("0.5mb-file", 0o644, noise(2, 512 << 10)),
            Layer::new(Compression::None)
                .dir("prohibited-folder", 0o700)
                .file("prohibited-folder/file", 0o7000, "no\n"),
        ]),
        _ => return None,
    })
}

/// What a cached layout depends on: this generator and the busybox it packs.
fn fingerprint() -> &'static str {
    static FINGERPRINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FINGERPRINT.get_or_init(|| {
        let mut h = Sha256::new();
        h.update(include_str!("lib.rs"));
        h.update(std::fs::read(BUSYBOX).unwrap_or_default());
        format!("{:x}", h.finalize())[..16].to_string()
    })
}

/// The OCI layout of image `name`, built under `cache` the first time (by whichever process
/// gets there first; the others use its copy) and reused while the generator is unchanged.
/// Layouts are readable by everyone, so tests running as another user can read them.
pub fn layout(cache: &Path, name: &str) -> PathBuf {
    assert!(NAMES.contains(&name), "no test image {name:?}; see NAMES");
    let dir = cache.join(fingerprint()).join(name);
    if dir.join("index.json").exists() {
        return dir;
    }
    // Threads of one process share its pid, and so the temp name: one build at a time.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("index.json").exists() {
        return dir;
    }
    let parent = dir.parent().expect("cache dir");
    std::fs::create_dir_all(parent).expect("create image cache");
    let image = image(name).expect("a name in NAMES");
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_layout(&tmp, &image).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    open_up(&tmp).expect("make the layout readable");
    // Another process may have finished first: its copy holds the same bytes.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            dir.join("index.json").exists(),
            "no layout at {}",
            dir.display()
        );
    }
    for p in [parent, cache] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .expect("make the cache readable");
    }
    dir
}

/// Makes the tree at `p` readable by every user.
fn open_up(p: &Path) -> io::Result<()> {
    let dir = p.is_dir();
    std::fs::set_permissions(
        p,
        std::fs::Permissions::from_mode(if dir { 0o755 } else { 0o644 }),
    )?;
    if dir {
        for e in std::fs::read_dir(p)? {
            open_up(&e?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_the_same_bytes_every_time() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for name in ["garden-rootfs", "generated", "4mb-image"] {
            let image = image(name).unwrap();
            write_layout(&a.join(name), &image).unwrap();
            write_layout(&b.join(name), &image).unwrap();
            let index = |d: &Path| std::fs::read(d.join(name).join("index.json")).unwrap();
            assert_eq!(index(&a), index(&b), "{name}: manifest digests differ");
        }
    }

    #[test]
    fn layer_tars_hold_what_the_layers_say() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_layout(dir, &image("garden-rootfs").unwrap()).unwrap();
        let tars = layer_tars(dir).unwrap();
        assert_eq!(tars.len(), 32);
        let names = |t: &[u8]| -> Vec<String> {
            tar::Archive::new(t)
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            names(&tars[17]),
            [
                "test",
                "test/foo",
                "test/foo/.wh.1",
                "test/foo/.wh.2",
                "test/foo/.wh.bar"
            ]
        );
        assert_eq!(
            names(&tars[15]),
            ["var", "var/.wh..wh..opq", "var/istillexist"]
        );
        assert!(names(&tars[0]).contains(&"bin/sh".to_string()));
    }

    #[test]
    fn unknown_names_are_none() {
        assert!(image("alpine").is_none());
        assert!(NAMES.iter().all(|n| image(n).is_some()));
    }
}
