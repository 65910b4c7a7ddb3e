//! A real registry for tests: Debian's `docker-registry` on a free loopback port with a temp
//! storage dir (optionally behind htpasswd basic auth, or serving HTTPS with a self-signed
//! certificate made for it), killed and removed on drop. Fixture OCI layouts are pushed to it
//! with oci-client, alone or as entries of a multi-platform index; foreign layers (with urls)
//! are left at their URLs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};

pub const USER: &str = "nestfs";
pub const PASSWORD: &str = "s3cret";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    auth: bool,
    tls: bool,
}

/// The registry's log: one line per request, with the bytes it sent.
const LOG: &str = "registry.log";

/// An image manifest in the registry, for an index to list.
pub struct Pushed {
    digest: String,
    size: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A self-signed certificate for 127.0.0.1 and its key, made in `dir` with the openssl CLI.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl req: {out:?}");
    (cert, key)
}

impl Registry {
    /// Starts a plain HTTP registry; with `auth`, it requires USER/PASSWORD.
    pub fn start(auth: bool) -> Registry {
        Registry::start_with(auth, false)
    }

    /// Starts a registry serving HTTPS with a self-signed certificate nobody trusts.
    pub fn start_tls() -> Registry {
        Registry::start_with(false, true)
    }

    fn start_with(auth: bool, tls: bool) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("nestfs-registry-")
            .tempdir()
            .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: json\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        // Part of the http section, so right after its addr.
        if tls {
            let (cert, key) = self_signed(dir.path());
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd: {out:?}");
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: nestfs-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        // Manifests may name foreign layers, whose blobs the registry does not hold.
        config.push_str("validation:\n  manifests:\n    urls:\n      allow: ['^https?://']\n");
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = spawn(dir.path());
        let mut r = Registry {
            child,
            addr,
            dir,
            auth,
            tls,
        };
        r.wait_up();
        r
    }

    /// Waits until the registry answers on its port. One that exits could not bind it (taken
    /// meanwhile, e.g. as some connection's source port): the test would fail for nothing.
    fn wait_up(&mut self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            let exited = self.child.try_wait().expect("poll docker-registry");
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "registry did not start on {} ({exited:?})",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the registry (its data stays): it is unreachable until [`Registry::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped registry again on the same port with the same data.
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path());
        self.wait_up();
    }

    /// The requests the registry served with `method`, from its log.
    pub fn log_lines(&self, method: &str) -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["http.request.method"] == method && v["msg"] == "response completed")
            .collect()
    }

    /// Bytes of blob `digest` the registry has sent so far (from its request log).
    pub fn bytes_served(&self, digest: &str) -> u64 {
        self.log_lines("GET")
            .iter()
            .filter(|v| {
                v["http.request.uri"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!("/blobs/{digest}")))
            })
            .filter_map(|v| v["http.response.written"].as_u64())
            .sum()
    }

    /// Where the registry keeps a blob's bytes (tests corrupt them to make it lie).
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes the OCI layout at `layout` (its first manifest) as `name:tag`; returns the
    /// `docker://` reference.
    pub fn push(&self, layout: &Path, name: &str, tag: &str) -> String {
        block_on(self.push_async(layout, name, tag));
        format!("docker://{}/{name}:{tag}", self.addr)
    }

    /// Pushes the layout's image as `name:tag`, for an index to list.
    pub fn push_entry(&self, layout: &Path, name: &str, tag: &str) -> Pushed {
        block_on(self.push_async(layout, name, tag))
    }

    /// Pushes an OCI index of `(image, os, architecture)` entries, in that order, as
    /// `name:tag`; returns the `docker://` reference.
    pub fn push_index(&self, name: &str, tag: &str, entries: &[(&Pushed, &str, &str)]) -> String {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(p, os, arch)| {
                serde_json::json!({
                    "mediaType": MANIFEST,
                    "digest": p.digest,
                    "size": p.size,
                    "platform": {"os": os, "architecture": arch},
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        block_on(async {
            let (client, reference) = self.client(name, tag).await;
            client
                .push_manifest_raw(
                    &reference,
                    serde_json::to_vec(&index).unwrap(),
                    HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
                )
                .await
                .expect("push index");
        });
        format!("docker://{}/{name}:{tag}", self.addr)
    }

    /// A client logged in for pushing to `name:tag`.
    async fn client(&self, name: &str, tag: &str) -> (Client, Reference) {
        let client = Client::new(ClientConfig {
            protocol: if self.tls {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            accept_invalid_certificates: self.tls,
            ..ClientConfig::default()
        });
        let reference = Reference::with_tag(self.addr.clone(), name.into(), tag.into());
        let auth = if self.auth {
            RegistryAuth::Basic(USER.into(), PASSWORD.into())
        } else {
            RegistryAuth::Anonymous
        };
        client
            .auth(&reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .expect("registry auth");
        (client, reference)
    }

    async fn push_async(&self, layout: &Path, name: &str, tag: &str) -> Pushed {
        let (client, reference) = self.client(name, tag).await;
        let blob = |d: &str| {
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let mut manifest: OciImageManifest = serde_json::from_slice(&blob(&digest)).unwrap();
        // Foreign layers stay at their URLs.
        let local = manifest.layers.iter().filter(|l| l.urls.is_none());
        for d in local.chain(std::iter::once(&manifest.config)) {
            client
                .push_blob(&reference, blob(&d.digest), &d.digest)
                .await
                .expect("push blob");
        }
        // Layouts may declare a config size a few bytes off; a registry insists on the truth.
        manifest.config.size = blob(&manifest.config.digest).len() as i64;
        let body = serde_json::to_vec(&manifest).unwrap();
        client
            .push_manifest_raw(&reference, body.clone(), HeaderValue::from_static(MANIFEST))
            .await
            .expect("push manifest");
        Pushed {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&body))),
            size: body.len(),
        }
    }
}

/// Starts docker-registry with the config in `dir`, logging to its log there.
fn spawn(dir: &Path) -> Child {
    // One start at a time in this process, so two registries never race for one port.
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG))
        .unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start docker-registry (apt-get install docker-registry)")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
