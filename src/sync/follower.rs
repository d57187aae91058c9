//! A filter VM's side of policy sync: it reads what the poller published to shared data,
//! verifies it again and compiles it, a chunked snapshot in slices so requests keep being
//! answered meanwhile.

use keyward_engine::chunked::{verify_manifest, BuildError, ChunkedBuild};
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::{
    Layout, PublishedStamp, SnapshotStamp, SyncSettings, MANIFEST_ENTRY, SNAPSHOT_ENTRY,
    SNAPSHOT_STAMP_ENTRY,
};

use crate::host::{HostError, LogLevel, SharedData, Telemetry};

/// What a look at the published snapshot found.
#[derive(Debug)]
pub enum Followed {
    /// Nothing new (or nothing usable yet).
    Nothing,
    /// A chunked snapshot is being compiled; more work is left for the next ticks, which
    /// should come quickly.
    Loading,
    /// A newer policy, complete and verified.
    Updated(Box<Policy>),
    /// The published snapshot verified but does not compile; it is skipped for good.
    Rejected,
}

/// A chunked snapshot being compiled by a filter VM.
#[derive(Debug)]
struct Building {
    stamp_bytes: Vec<u8>,
    build: ChunkedBuild,
    /// The bytes of the chunk being worked on.
    chunk: Option<Vec<u8>>,
}

/// A filter VM's view of the published snapshot.
#[derive(Debug, Default)]
pub struct PolicyFollower {
    seen: Option<Vec<u8>>,
    building: Option<Building>,
}

impl PolicyFollower {
    /// Records that the snapshot under this stamp entry is in use already (the VM's own poller
    /// handed it over).
    pub fn mark_seen(&mut self, stamp_bytes: Vec<u8>) {
        self.seen = Some(stamp_bytes);
        self.building = None;
    }

    /// Whether a chunked snapshot is being compiled.
    #[cfg(test)]
    pub fn is_building(&self) -> bool {
        self.building.is_some()
    }

    /// Looks for a newer policy than `current`. An envelope is verified and compiled at once
    /// (it is small); a chunked snapshot is compiled over several calls, each spending at most
    /// about `budget_ms` (checked between slices of a few hundred keys), so the VM keeps
    /// answering requests with its current policy meanwhile. Everything is verified again here:
    /// shared data is trusted, but a policy is never used without a signature check.
    pub fn refresh(
        &mut self,
        host: &(impl SharedData + Telemetry),
        settings: &SyncSettings,
        current: Option<SnapshotStamp>,
        budget_ms: u64,
    ) -> Result<Followed, HostError> {
        let Some((stamp_bytes, _)) = host.shared_get(SNAPSHOT_STAMP_ENTRY)? else {
            return Ok(Followed::Nothing);
        };
        if self.seen.as_deref() == Some(stamp_bytes.as_slice()) {
            self.building = None;
            return Ok(Followed::Nothing);
        }
        let Some(published) = PublishedStamp::decode(&stamp_bytes) else {
            return Ok(Followed::Nothing);
        };
        if !published.stamp.replaces(current) {
            self.mark_seen(stamp_bytes);
            return Ok(Followed::Nothing);
        }
        match published.layout {
            Layout::Envelope => {
                self.building = None;
                self.follow_envelope(host, settings, current, stamp_bytes, published.stamp)
            }
            Layout::Chunked => {
                self.follow_chunked(host, settings, stamp_bytes, published.stamp, budget_ms)
            }
        }
    }

    fn follow_envelope(
        &mut self,
        host: &(impl SharedData + Telemetry),
        settings: &SyncSettings,
        current: Option<SnapshotStamp>,
        stamp_bytes: Vec<u8>,
        stamp: SnapshotStamp,
    ) -> Result<Followed, HostError> {
        let Some((envelope, _)) = host.shared_get(SNAPSHOT_ENTRY)? else {
            return Ok(Followed::Nothing);
        };
        match verify_snapshot(&envelope, &settings.signing_keys) {
            Ok(policy) => {
                let envelope_stamp = SnapshotStamp {
                    version: policy.version,
                    issued_at: policy.issued_at,
                };
                // An envelope that does not match its stamp is mid-publication: look again on
                // the next tick rather than settle on it.
                if envelope_stamp == stamp {
                    self.seen = Some(stamp_bytes);
                }
                Ok(if envelope_stamp.replaces(current) {
                    Followed::Updated(Box::new(policy))
                } else {
                    Followed::Nothing
                })
            }
            Err(rejected) => {
                // Not marked as seen: the stamp may have been published ahead of its envelope.
                host.log(
                    LogLevel::Warn,
                    &format!("keyward sync: shared snapshot not usable yet: {rejected}"),
                );
                Ok(Followed::Nothing)
            }
        }
    }

    fn follow_chunked(
        &mut self,
        host: &(impl SharedData + Telemetry),
        settings: &SyncSettings,
        stamp_bytes: Vec<u8>,
        stamp: SnapshotStamp,
        budget_ms: u64,
    ) -> Result<Followed, HostError> {
        let start = host.now_ms()?;
        if self
            .building
            .as_ref()
            .is_some_and(|building| building.stamp_bytes != stamp_bytes)
        {
            // A newer snapshot was published mid-build: start over with it.
            self.building = None;
        }
        if self.building.is_none() {
            let Some((bytes, _)) = host.shared_get(MANIFEST_ENTRY)? else {
                return Ok(Followed::Nothing);
            };
            let manifest = match verify_manifest(&bytes, &settings.signing_keys) {
                Ok(manifest) => manifest,
                Err(rejected) => {
                    host.log(
                        LogLevel::Warn,
                        &format!("keyward sync: shared manifest not usable yet: {rejected}"),
                    );
                    return Ok(Followed::Nothing);
                }
            };
            if manifest.stamp() != stamp {
                // Mid-publication: the stamp moves after the manifest.
                return Ok(Followed::Nothing);
            }
            let build = match ChunkedBuild::new(&manifest) {
                Ok(build) => build,
                Err(error) => {
                    self.mark_seen(stamp_bytes);
                    host.log(
                        LogLevel::Error,
                        &format!("keyward sync: published snapshot unusable: {error}"),
                    );
                    return Ok(Followed::Rejected);
                }
            };
            self.building = Some(Building {
                stamp_bytes: stamp_bytes.clone(),
                build,
                chunk: None,
            });
        }
        let deadline = start.saturating_add(budget_ms);
        let out_of_time = || host.now_ms().map_or(true, |now| now >= deadline);
        loop {
            let Some(building) = &mut self.building else {
                return Ok(Followed::Nothing);
            };
            let Some(entry) = building.build.next_chunk().map(|chunk| chunk.entry()) else {
                let Some(building) = self.building.take() else {
                    return Ok(Followed::Nothing);
                };
                self.seen = Some(stamp_bytes);
                return Ok(match building.build.finish() {
                    Some(policy) => Followed::Updated(Box::new(policy)),
                    None => Followed::Nothing,
                });
            };
            if building.chunk.is_none() {
                match host.shared_get(&entry)? {
                    Some((bytes, _)) if !bytes.is_empty() => building.chunk = Some(bytes),
                    // Not there: retired by a newer publication (the next look starts over
                    // with it) or not written yet. Try again on a later tick.
                    _ => return Ok(Followed::Nothing),
                }
            }
            let bytes = building.chunk.as_deref().unwrap_or_default();
            match building.build.work(bytes, out_of_time) {
                Ok(true) => building.chunk = None,
                Ok(false) => return Ok(Followed::Loading),
                Err(BuildError::ChunkMismatch) => {
                    building.chunk = None;
                    return Ok(Followed::Nothing);
                }
                Err(BuildError::Invalid(error)) => {
                    self.mark_seen(stamp_bytes);
                    host.log(
                        LogLevel::Error,
                        &format!(
                            "keyward sync: published snapshot version {} unusable, last good policy stays: {error}",
                            stamp.version
                        ),
                    );
                    return Ok(Followed::Rejected);
                }
            }
            if out_of_time() {
                return Ok(Followed::Loading);
            }
        }
    }
}
