//! A repository's files at a commit, read as one tarball. `GET /repos/{repo}/tarball/{ref}` is
//! one rate-limited request, which GitHub answers with a redirect to its download host
//! (codeload); the download itself is not counted. The download is bounded, and so is what it
//! unpacks to; only regular files under safe paths are kept, and of those only text is read.

use super::client::{check_path, encode_path, ClientError, GithubClient, RequestOptions};
use super::retry::{self, GithubError, RetryPolicy};
use reqwest::{Method, Response, Url};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::time::Duration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A file holding a NUL byte within this many first bytes is binary.
const BINARY_SNIFF: usize = 8 * 1024;

/// The download gets at least this long, whatever the policy's timeout for API answers.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a file is in [`RepoSnapshot::skipped`] (besides "larger than …").
pub const BINARY: &str = "binary";
pub const NOT_UTF8: &str = "not UTF-8";

/// How much a tarball may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarballLimits {
    /// The gzipped archive as downloaded.
    pub max_download_bytes: u64,
    /// Everything the archive unpacks to (the whole tar stream, skipped files included).
    pub max_unpacked_bytes: u64,
    /// One file; a larger one is skipped.
    pub max_file_bytes: u64,
}

impl Default for TarballLimits {
    /// 50 MiB downloaded, 200 MiB unpacked, 256 KiB per file.
    fn default() -> Self {
        Self {
            max_download_bytes: 50 * MIB,
            max_unpacked_bytes: 200 * MIB,
            max_file_bytes: 256 * KIB,
        }
    }
}

/// A repository's files at a commit, or why they were not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tarball {
    Files(RepoSnapshot),
    /// Past a limit: `what`, e.g. "the download is larger than 50 MiB".
    TooLarge {
        what: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSnapshot {
    /// Every regular file's path, sorted: the repository's file list (binary and skipped files
    /// included).
    pub paths: Vec<String>,
    /// The text files, sorted by path.
    pub files: Vec<RepoFile>,
    /// The files not read, sorted by path.
    pub skipped: Vec<SkippedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFile {
    pub path: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    /// [`BINARY`], [`NOT_UTF8`] or "larger than 256 KiB".
    pub why: String,
}

impl GithubClient {
    /// The files of `repo` at `git_ref` (a branch or a commit), in one request and one download.
    /// A tarball past `limits` is [`Tarball::TooLarge`], read no further; no such repository or
    /// ref is GitHub's 404 ([`GithubError::Permanent`]).
    ///
    /// The redirect to the download is followed by hand, without the installation token: the
    /// download's address carries what it needs, and the token is for GitHub's API only.
    pub async fn tarball(&self, installation: i64, repo: &str, git_ref: &str, limits: &TarballLimits) -> Result<Tarball, ClientError> {
        let path = format!("/repos/{repo}/tarball/{}", encode_path(git_ref)?);
        let options = RequestOptions {
            keep_redirect: true,
            ..RequestOptions::default()
        };
        let answer = self.request_as(installation, Method::GET, &path, None, options).await?;
        let body = if answer.status().is_redirection() {
            let location = download_location(self.api_url(), &answer)?;
            drop(answer);
            self.download(location, limits.max_download_bytes).await?
        } else {
            // Served by the API itself (no redirect): the same bound applies.
            read_bounded(answer, limits.max_download_bytes).await?
        };
        let Some(archive) = body else {
            return Ok(Tarball::TooLarge {
                what: format!("the download is larger than {}", size(limits.max_download_bytes)),
            });
        };
        let limits = *limits;
        tokio::task::spawn_blocking(move || unpack(&archive, &limits))
            .await
            .map_err(|e| ClientError::Decode(format!("unpacking the tarball stopped: {e}")))?
    }

    /// GETs the download without credentials, through the retry layer with a timeout long
    /// enough for the download. None: larger than `max` bytes.
    async fn download(&self, url: Url, max: u64) -> Result<Option<Vec<u8>>, ClientError> {
        let policy = RetryPolicy {
            request_timeout: self.policy().request_timeout.max(DOWNLOAD_TIMEOUT),
            ..self.policy().clone()
        };
        let http = self.unredirected_http();
        let response = retry::send(|| http.get(url.clone()).header("user-agent", "orch"), &policy).await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(ClientError::Decode(format!(
                "the tarball's download answered {} instead of the archive",
                response.status()
            )));
        }
        read_bounded(response, max).await
    }
}

/// Where a redirect of the tarball request leads, resolved against the API's address. An https
/// API's download is https too. Messages leave the address's query out: it carries a token.
fn download_location(api_url: &str, answer: &Response) -> Result<Url, ClientError> {
    let status = answer.status();
    let location = answer
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ClientError::Decode(format!("the tarball request answered {status} without a usable Location")))?;
    let shown = location.split('?').next().unwrap_or_default();
    let url = Url::parse(&format!("{api_url}/"))
        .and_then(|base| base.join(location))
        .map_err(|e| ClientError::Decode(format!("the tarball's Location {shown:?} is not an address: {e}")))?;
    let plain_allowed = api_url.starts_with("http://");
    match url.scheme() {
        "https" => Ok(url),
        "http" if plain_allowed => Ok(url),
        scheme => Err(ClientError::Decode(format!(
            "the tarball's Location {shown:?} uses {scheme}, which is refused"
        ))),
    }
}

/// The body, read chunk by chunk up to `max` bytes; None as soon as it is larger (or says so).
async fn read_bounded(mut response: Response, max: u64) -> Result<Option<Vec<u8>>, ClientError> {
    if response.content_length().is_some_and(|n| n > max) {
        return Ok(None);
    }
    let mut body = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            ClientError::Github(GithubError::Exhausted {
                attempts: 1,
                last: format!("the tarball's download broke off: {}", retry::transport_message(e)),
            })
        })?;
        let Some(chunk) = chunk else { return Ok(Some(body)) };
        if body.len() as u64 + chunk.len() as u64 > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
}

/// `bytes` in the largest whole unit: "50 MiB", "256 KiB", "1000 bytes".
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// Unpacks a gzipped tar as GitHub makes it: every file under one top-level folder
/// (`owner-repo-sha/`), which is stripped. Entries that are not regular files (folders,
/// symlinks, links, devices) are left out, and so are paths that are absolute, have a `.` or
/// `..` segment, a backslash or a control character, are not UTF-8 or lie outside the folder:
/// none of them can be named safely as a file of the repository. CPU work: run it off the
/// async workers.
pub fn unpack(archive: &[u8], limits: &TarballLimits) -> Result<Tarball, ClientError> {
    let mut stream = Bounded {
        inner: flate2::read::GzDecoder::new(archive),
        left: limits.max_unpacked_bytes,
        over: false,
    };
    let read = read_entries(&mut stream, limits);
    if stream.over {
        return Ok(Tarball::TooLarge {
            what: format!("the unpacked files are larger than {}", size(limits.max_unpacked_bytes)),
        });
    }
    read.map(Tarball::Files)
        .map_err(|e| ClientError::Decode(format!("the tarball could not be unpacked: {e}")))
}

fn read_entries(stream: &mut impl Read, limits: &TarballLimits) -> io::Result<RepoSnapshot> {
    let mut archive = tar::Archive::new(stream);
    let mut folder: Option<String> = None;
    // path → its text, or why it was skipped.
    let mut found: BTreeMap<String, Result<String, String>> = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let Ok(full) = std::str::from_utf8(&raw) else { continue };
        if check_path(full).is_err() {
            continue;
        }
        let Some((top, path)) = full.split_once('/') else { continue };
        if top != folder.get_or_insert_with(|| top.to_string()) {
            continue;
        }
        let path = path.to_string();
        if entry.size() > limits.max_file_bytes {
            found.insert(path, Err(format!("larger than {}", size(limits.max_file_bytes))));
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(limits.max_file_bytes).read_to_end(&mut bytes)?;
        let outcome = if bytes[..bytes.len().min(BINARY_SNIFF)].contains(&0) {
            Err(BINARY.to_string())
        } else {
            String::from_utf8(bytes).map_err(|_| NOT_UTF8.to_string())
        };
        found.insert(path, outcome);
    }
    let mut snapshot = RepoSnapshot {
        paths: found.keys().cloned().collect(),
        files: Vec::new(),
        skipped: Vec::new(),
    };
    for (path, outcome) in found {
        match outcome {
            Ok(text) => snapshot.files.push(RepoFile { path, text }),
            Err(why) => snapshot.skipped.push(SkippedFile { path, why }),
        }
    }
    Ok(snapshot)
}

/// A reader that fails once more than `left` bytes would come out of `inner`, and says so
/// (`over`): how a gzip bomb is told from a broken archive.
struct Bounded<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the bound: the end of the stream is fine, one byte more is not.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(io::Error::other("the archive unpacks to more than allowed"));
        }
        let room = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;
    use tar::{EntryType, Header};

    fn gzip(tar: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(tar).unwrap();
        gz.finish().unwrap()
    }

    /// An entry written with its name as given, unchecked (the tar crate's own setters refuse
    /// `..` and absolute paths, which is what these tests need to write).
    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: EntryType, data: &[u8], link: Option<&[u8]>) {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(target) = link {
            h.set_link_name_literal(target).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn snapshot(t: Tarball) -> RepoSnapshot {
        match t {
            Tarball::Files(s) => s,
            Tarball::TooLarge { what } => panic!("too large: {what}"),
        }
    }

    #[test]
    fn only_regular_files_under_safe_paths_are_kept() {
        let mut b = tar::Builder::new(Vec::new());
        let top = "acme-widgets-0123456";
        raw_entry(
            &mut b,
            b"pax_global_header",
            EntryType::XGlobalHeader,
            b"52 comment=0123456789\n",
            None,
        );
        // Unsafe, and first: none of them may pass for the top-level folder either. Walks up,
        // absolute, a symlink out of the tree.
        raw_entry(&mut b, b"../evil", EntryType::Regular, b"evil\n", None);
        raw_entry(&mut b, b"/etc/passwd", EntryType::Regular, b"root\n", None);
        raw_entry(&mut b, format!("{top}/etc").as_bytes(), EntryType::Symlink, b"", Some(b"/etc"));
        raw_entry(&mut b, format!("{top}/").as_bytes(), EntryType::Directory, b"", None);
        raw_entry(
            &mut b,
            format!("{top}/src/lib.rs").as_bytes(),
            EntryType::Regular,
            b"pub fn f() {}\n",
            None,
        );
        raw_entry(&mut b, format!("{top}/README").as_bytes(), EntryType::Regular, b"hello\n", None);
        // Unsafe within the folder: a `..` inside, a backslash, a symlink, a hard link; and a
        // file outside the folder and one at the top level.
        raw_entry(&mut b, format!("{top}/../evil2").as_bytes(), EntryType::Regular, b"evil\n", None);
        raw_entry(&mut b, format!("{top}/a\\..\\b").as_bytes(), EntryType::Regular, b"x\n", None);
        raw_entry(
            &mut b,
            format!("{top}/link").as_bytes(),
            EntryType::Symlink,
            b"",
            Some(b"/etc/passwd"),
        );
        raw_entry(&mut b, format!("{top}/hard").as_bytes(), EntryType::Link, b"", Some(b"README"));
        raw_entry(&mut b, b"elsewhere/file", EntryType::Regular, b"x\n", None);
        raw_entry(&mut b, b"toplevel", EntryType::Regular, b"x\n", None);
        // Read but not kept as text.
        raw_entry(
            &mut b,
            format!("{top}/logo.png").as_bytes(),
            EntryType::Regular,
            b"\x89PNG\0\0\0\rIHDR",
            None,
        );
        raw_entry(
            &mut b,
            format!("{top}/latin1.txt").as_bytes(),
            EntryType::Regular,
            b"caf\xe9\n",
            None,
        );
        raw_entry(&mut b, format!("{top}/big.txt").as_bytes(), EntryType::Regular, &[b'a'; 2048], None);
        let archive = gzip(&b.into_inner().unwrap());

        let limits = TarballLimits {
            max_file_bytes: 1024,
            ..TarballLimits::default()
        };
        let s = snapshot(unpack(&archive, &limits).unwrap());
        assert_eq!(s.paths, ["README", "big.txt", "latin1.txt", "logo.png", "src/lib.rs"]);
        assert_eq!(
            s.files,
            [
                RepoFile {
                    path: "README".into(),
                    text: "hello\n".into()
                },
                RepoFile {
                    path: "src/lib.rs".into(),
                    text: "pub fn f() {}\n".into()
                },
            ]
        );
        let skipped: Vec<(&str, &str)> = s.skipped.iter().map(|f| (f.path.as_str(), f.why.as_str())).collect();
        assert_eq!(
            skipped,
            [
                ("big.txt", "larger than 1 KiB"),
                ("latin1.txt", "not UTF-8"),
                ("logo.png", "binary")
            ]
        );
    }

    #[test]
    fn a_gzip_bomb_is_too_large_not_unpacked() {
        // 4 MiB of zeros in one file compress to a few KiB; the limit is 1 MiB (the real one is
        // 200 MiB: the same check, smaller numbers to stay fast).
        let zeros = vec![0u8; 4 * MIB as usize];
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(&mut b, b"acme-widgets-0123456/zeros", EntryType::Regular, &zeros, None);
        let archive = gzip(&b.into_inner().unwrap());
        assert!(archive.len() < 64 * KIB as usize, "a bomb: {} bytes", archive.len());
        let limits = TarballLimits {
            max_unpacked_bytes: MIB,
            ..TarballLimits::default()
        };
        assert_eq!(
            unpack(&archive, &limits).unwrap(),
            Tarball::TooLarge {
                what: "the unpacked files are larger than 1 MiB".into()
            }
        );
        // Within the bound the same archive unpacks (the file itself skipped as too large).
        let roomy = TarballLimits {
            max_unpacked_bytes: 8 * MIB,
            ..TarballLimits::default()
        };
        let s = snapshot(unpack(&archive, &roomy).unwrap());
        assert_eq!(s.paths, ["zeros"]);
        assert_eq!(s.skipped[0].why, "larger than 256 KiB");
    }

    #[test]
    fn a_broken_archive_is_an_error() {
        let e = unpack(b"not gzip at all", &TarballLimits::default()).unwrap_err();
        assert!(matches!(e, ClientError::Decode(_)), "{e}");
    }

    #[test]
    fn sizes_are_named_in_whole_units() {
        assert_eq!(size(50 * MIB), "50 MiB");
        assert_eq!(size(256 * KIB), "256 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }

    /// A download without `Content-Length` (chunked, as an archive made on the fly comes) is cut
    /// off at the bound, not read to its end.
    #[tokio::test]
    async fn a_chunked_download_is_read_only_up_to_its_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = socket.read(&mut request).await;
                    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    // 64 chunks of 1 KiB, then the end.
                    for _ in 0..64 {
                        let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
                        if socket.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        let get = || async { reqwest::get(format!("http://{addr}/")).await.unwrap() };
        let response = get().await;
        assert_eq!(response.content_length(), None, "the test serves no length");
        assert_eq!(read_bounded(response, 10 * KIB).await.unwrap(), None);
        let whole = read_bounded(get().await, 64 * KIB).await.unwrap().unwrap();
        assert_eq!(whole.len(), 64 * KIB as usize);
    }
}
