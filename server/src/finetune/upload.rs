//! Uploads written as they arrive: [`Upload`] writes a file's bytes to a temporary file in
//! the files directory and checks training files line by line on the way ([`JsonlReader`]),
//! so an upload of any size costs one line of memory; [`UploadWriter`] hands it the bytes in
//! batches of [`BATCH_BYTES`], each written and checked on tokio's blocking pool while the
//! next arrives. No thread is held between batches, so a slow client holds none, and a slow
//! disk slows the client rather than filling memory.
//!
//! Nothing is half written: the file is renamed into place and its row inserted only when the
//! whole upload is good ([`Upload::finish`]); an upload dropped before that (an error, a client
//! that went away) removes its temporary file.

use std::{fs, io::Write, path::PathBuf, sync::Arc};

use tokio::task::JoinHandle;

use super::{
    dataset::{Conversation, DatasetError, JsonlReader},
    error::{FineTuneError, Result},
    store::{io, FileObject, Store},
};

/// The purpose whose files are training data, checked as they arrive.
pub const FINE_TUNE: &str = "fine-tune";

/// How many bytes an [`UploadWriter`] gathers before it writes them: an upload holds at most
/// about twice this (one batch written, the next arriving).
pub const BATCH_BYTES: usize = 256 << 10;

/// How an upload's bytes are checked.
enum Check {
    /// Not a training file.
    Off,
    /// A training file: the first bad line ends the upload.
    Strict(JsonlReader),
    /// The purpose is not known yet (the `file` part came first): checked, but a bad line
    /// only matters if the purpose turns out to be `fine-tune`.
    Lenient(JsonlReader),
    /// Lenient, and a line was bad.
    Failed(DatasetError),
}

fn ignore(_: usize, _: Conversation) -> std::result::Result<(), DatasetError> {
    Ok(())
}

/// One upload being written (see the module docs).
pub struct Upload {
    store: Arc<Store>,
    file: FileObject,
    tmp: PathBuf,
    out: fs::File,
    check: Check,
    /// Set once the file is in place: the temporary file is no longer ours to remove.
    committed: bool,
}

impl Upload {
    /// Starts an upload (creates its temporary file); `purpose`: the upload's purpose, if it
    /// is known yet.
    pub fn begin(store: Arc<Store>, purpose: Option<&str>) -> Result<Self> {
        let file = FileObject::new("", purpose.unwrap_or(""));
        let tmp = store.upload_path(&file.id);
        let out = fs::File::create(&tmp).map_err(io(&tmp))?;
        let check = match purpose {
            Some(FINE_TUNE) => Check::Strict(JsonlReader::new()),
            Some(_) => Check::Off,
            None => Check::Lenient(JsonlReader::new()),
        };
        Ok(Self { store, file, tmp, out, check, committed: false })
    }

    /// Writes (and checks) the next bytes.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        match &mut self.check {
            Check::Off | Check::Failed(_) => {}
            Check::Strict(r) => r.feed(chunk, &mut ignore)?,
            Check::Lenient(r) => {
                if let Err(e) = r.feed(chunk, &mut ignore) {
                    self.check = Check::Failed(e);
                }
            }
        }
        self.out.write_all(chunk).map_err(io(&self.tmp))?;
        self.file.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Ends the upload as file `filename` of `purpose`: checks the end of a training file,
    /// flushes the contents to disk, renames them into place and records the file.
    pub fn finish(mut self, filename: &str, purpose: &str) -> Result<FileObject> {
        if self.file.bytes == 0 {
            return Err(FineTuneError::EmptyFile);
        }
        if purpose == FINE_TUNE {
            match std::mem::replace(&mut self.check, Check::Off) {
                Check::Strict(r) | Check::Lenient(r) => {
                    r.finish(&mut ignore)?;
                }
                Check::Failed(e) => return Err(e.into()),
                // Begun as another purpose: the bytes were never checked.
                Check::Off => {
                    return Err(FineTuneError::invalid("purpose", "the upload was begun with another purpose"));
                }
            }
        }
        self.out.sync_all().map_err(io(&self.tmp))?;
        self.file.filename = filename.to_owned();
        self.file.purpose = purpose.to_owned();
        self.store.commit_file(&self.file, &self.tmp)?;
        self.committed = true;
        Ok(self.file.clone())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_file(&self.tmp) {
                tracing::warn!(path = %self.tmp.display(), "cannot remove an unfinished upload: {e}");
            }
        }
    }
}

/// An [`Upload`] fed from async code (see the module docs). Dropped mid-way (the request
/// was dropped), it drops the upload, and the upload's temporary file with it.
pub struct UploadWriter {
    /// The upload while no batch is being written.
    idle: Option<Upload>,
    /// The batch being written; it hands the upload back.
    writing: Option<JoinHandle<(Upload, Result<()>)>>,
    batch: Vec<u8>,
}

impl UploadWriter {
    /// Begins an upload (see [`Upload::begin`]).
    pub async fn begin(store: Arc<Store>, purpose: Option<&str>) -> Result<Self> {
        let purpose = purpose.map(str::to_owned);
        let upload = tokio::task::spawn_blocking(move || Upload::begin(store, purpose.as_deref())).await??;
        Ok(Self { idle: Some(upload), writing: None, batch: Vec::new() })
    }

    /// Takes the next bytes; an error (a bad line of a training file, a disk error) ends the
    /// upload, so the rest need not be sent.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.batch.extend_from_slice(chunk);
        if self.batch.len() >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the batch being written, then starts writing the gathered one.
    async fn flush(&mut self) -> Result<()> {
        let mut upload = self.settle().await?;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES));
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let written = upload.write(&batch);
            (upload, written)
        }));
        Ok(())
    }

    /// The upload, once no batch is being written.
    async fn settle(&mut self) -> Result<Upload> {
        if let Some(task) = self.writing.take() {
            let (upload, written) = task.await?;
            written?;
            return Ok(upload);
        }
        Ok(self.idle.take().expect("an upload is idle when none is being written"))
    }

    /// Writes what is left: the upload, ready to [`Upload::finish`].
    pub async fn end(mut self) -> Result<Upload> {
        if !self.batch.is_empty() {
            self.flush().await?;
        }
        self.settle().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = br#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
"#;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        (dir, store)
    }

    fn entries(dir: &tempfile::TempDir) -> usize {
        fs::read_dir(dir.path().join("files")).unwrap().count()
    }

    #[test]
    fn a_finished_upload_is_a_file() {
        let (dir, store) = store();
        let mut up = Upload::begin(store.clone(), Some(FINE_TUNE)).unwrap();
        for piece in GOOD.chunks(7) {
            up.write(piece).unwrap();
        }
        up.write(GOOD).unwrap();
        let f = up.finish("t.jsonl", FINE_TUNE).unwrap();
        assert_eq!((f.bytes, f.filename.as_str(), f.purpose.as_str()), (2 * GOOD.len() as u64, "t.jsonl", FINE_TUNE));
        assert_eq!(store.get_file(&f.id).unwrap(), Some(f.clone()));
        assert_eq!(fs::read(store.file_path(&f.id)).unwrap().len(), 2 * GOOD.len());
        assert_eq!(entries(&dir), 1);
    }

    #[test]
    fn a_bad_or_dropped_upload_leaves_nothing() {
        let (dir, store) = store();
        let mut up = Upload::begin(store.clone(), Some(FINE_TUNE)).unwrap();
        up.write(GOOD).unwrap();
        assert_eq!(entries(&dir), 1, "the temporary file");
        let e = up.write(b"{\"messages\": 1}\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: "), "{e}");
        drop(up);
        let mut up = Upload::begin(store.clone(), None).unwrap();
        up.write(b"not json\n").unwrap();
        drop(up);
        let empty = Upload::begin(store.clone(), Some("batch")).unwrap();
        assert!(matches!(empty.finish("e", "batch"), Err(FineTuneError::EmptyFile)));
        assert_eq!(entries(&dir), 0);
        assert!(store.list_files(None, None, 10, true).unwrap().0.is_empty());
    }

    #[test]
    fn an_early_file_part_is_checked_once_its_purpose_is_known() {
        let (_dir, store) = store();
        let bad = b"not json\n";
        let mut up = Upload::begin(store.clone(), None).unwrap();
        up.write(bad).unwrap();
        assert!(up.finish("b.jsonl", "user_data").is_ok(), "other purposes are stored unchecked");
        let mut up = Upload::begin(store.clone(), None).unwrap();
        up.write(bad).unwrap();
        let e = up.finish("b.jsonl", FINE_TUNE).unwrap_err();
        assert!(e.to_string().starts_with("line 1: invalid JSON"), "{e}");
        let mut up = Upload::begin(store, None).unwrap();
        up.write(GOOD).unwrap();
        up.finish("g.jsonl", FINE_TUNE).unwrap();
    }

    #[tokio::test]
    async fn a_writer_batches_and_cleans_up_when_dropped() {
        let (dir, store) = store();
        let mut w = UploadWriter::begin(store.clone(), Some(FINE_TUNE)).await.unwrap();
        let n = 3 * BATCH_BYTES / GOOD.len();
        for _ in 0..n {
            w.write(GOOD).await.unwrap();
        }
        let f = w.end().await.unwrap().finish("t.jsonl", FINE_TUNE).unwrap();
        assert_eq!(f.bytes, (n * GOOD.len()) as u64);
        assert_eq!(fs::read(store.file_path(&f.id)).unwrap(), GOOD.repeat(n));

        // A bad line ends the upload at a later write or at the end.
        let mut w = UploadWriter::begin(store.clone(), Some(FINE_TUNE)).await.unwrap();
        w.write(b"{}\n").await.unwrap();
        let e = w.end().await.err().expect("refused");
        assert!(e.to_string().starts_with("line 1: "), "{e}");

        // Dropped while a batch is being written.
        let mut w = UploadWriter::begin(store.clone(), Some(FINE_TUNE)).await.unwrap();
        for _ in 0..n {
            w.write(GOOD).await.unwrap();
        }
        drop(w);
        for _ in 0..250 {
            if entries(&dir) == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the temporary file is still there");
    }
}
