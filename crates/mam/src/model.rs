//! Plain data shared by the query layer and the store.

/// One archived message as stored and returned by queries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchivedRow {
    /// The archive's id for the message (XEP-0359 stanza id, XEP-0313 result id). Chosen
    /// by the caller; unique per archive.
    pub stanza_id: String,
    /// The archive key: the room's bare JID, or the user's bare JID.
    pub archive: String,
    /// For user archives the peer's bare JID; for rooms the sender's real bare JID.
    pub with_jid: String,
    /// For rooms, the sender's nickname at the time.
    pub from_nick: Option<String>,
    /// When the message was received, in microseconds since the Unix epoch.
    pub stamp_micros: i64,
    /// The full serialized stanza (serialized with `jabber:client` as the default
    /// namespace in scope, so its root carries no `xmlns`).
    pub payload: String,
    /// The message body, indexed for full-text search.
    pub body: Option<String>,
    /// Whether the message was retracted. Queries never return retracted rows.
    pub retracted: bool,
}

/// One page of query results, with what the XEP-0313 `<fin/>` needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The page, in transmission order: chronological, or newest first when `flipped`.
    pub rows: Vec<ArchivedRow>,
    /// No more results in the paging direction (forward: nothing after the page;
    /// backward: nothing before it).
    pub complete: bool,
    /// Size of the whole result set (filters applied, RSM cursor not).
    pub count: u64,
    /// Position in the result set of the chronologically first row of the page.
    pub first_index: Option<u64>,
    /// The rows are newest first (XEP-0313 `<flip-page/>`).
    pub flipped: bool,
}

impl Page {
    /// The chronologically first and last rows of the page (whatever the transmission
    /// order), which are what RSM `<first/>` and `<last/>` name.
    pub fn bounds(&self) -> Option<(&ArchivedRow, &ArchivedRow)> {
        let (a, b) = (self.rows.first()?, self.rows.last()?);
        Some(if self.flipped { (b, a) } else { (a, b) })
    }
}

/// First or last message of an archive (XEP-0313 archive metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEdge {
    pub stanza_id: String,
    pub stamp_micros: i64,
}

/// The oldest and newest (non-retracted) messages of an archive; both `None` when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveMetadata {
    pub start: Option<ArchiveEdge>,
    pub end: Option<ArchiveEdge>,
}
