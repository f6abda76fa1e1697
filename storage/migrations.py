"""Numbered schema migrations; index i holds the script that moves user_version from i to i+1.

Never edit a released script: append a new one.
"""

MIGRATIONS: list[str] = [
    # 1: users, hub messages with external id mappings, per-user outbox, shares, conversations.
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        is_admin INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE user_numbers (
        number INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL UNIQUE
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        contact TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        content TEXT NOT NULL,
        time REAL NOT NULL,
        reply_to INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_conv ON messages (user_id, contact, id);
    CREATE TABLE message_refs (
        message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        system TEXT NOT NULL,
        external_id TEXT NOT NULL,
        PRIMARY KEY (system, external_id)
    );
    CREATE INDEX message_refs_msg ON message_refs (message_id);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        frame TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX outbox_user ON outbox (user_id, seq);
    CREATE TABLE shares (
        id TEXT PRIMARY KEY,
        contactor TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE conversations (
        user_id TEXT NOT NULL,
        contact TEXT NOT NULL,
        thread TEXT NOT NULL,
        external_id TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (user_id, contact, thread)
    );
    """,
    # 2: the conversation thread of each message; replies still running (recovered after a crash).
    """
    ALTER TABLE messages ADD COLUMN thread TEXT NOT NULL DEFAULT 'default';
    CREATE TABLE inflight (
        message_id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        contact TEXT NOT NULL,
        thread TEXT NOT NULL,
        stream_request_id TEXT,
        started REAL NOT NULL
    );
    """,
    # 3: shares expire by age (deleted on write); the index keeps that delete and the count
    # for the cap from reading every card (a card's text sits before `created` in each row).
    """
    CREATE INDEX shares_created ON shares (created);
    """,
    # 4: the newest upstream message known to belong to a settled turn of each conversation:
    # what a turn cut short (recalled while running, or by a crash) is told apart from.
    """
    ALTER TABLE conversations ADD COLUMN anchor_id TEXT;
    ALTER TABLE conversations ADD COLUMN anchor_at TEXT;
    """,
    # 5: each plugin's small persistent key-value store.
    """
    CREATE TABLE plugin_kv (
        plugin TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (plugin, key)
    ) WITHOUT ROWID;
    """,
    # 6: each conversation's own instructions (a persona), kept apart from `conversations` so
    # that forgetting a conversation's upstream chat (a reset) keeps them.
    """
    CREATE TABLE conversation_instructions (
        user_id TEXT NOT NULL,
        contact TEXT NOT NULL,
        thread TEXT NOT NULL,
        text TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (user_id, contact, thread)
    ) WITHOUT ROWID;
    """,
    # 7: what is in flight: a reply on its way ('reply') or a command line not yet answered
    # ('command'); after a crash the two are settled differently.
    """
    ALTER TABLE inflight ADD COLUMN kind TEXT NOT NULL DEFAULT 'reply';
    """,
    # 8: what each message is: said in the conversation ('message': the user's, a reply, a
    # scheduled message), a command line ('command'), the bridge's answer or notice ('notice'),
    # or a message a filter held back ('held'). Histories and model contexts keep 'message' only.
    """
    ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
    """,
    # 9: the QQ link: which stored message each QQ message is (a user's, or one the bridge sent
    # for a reply), per account; and the contact each QQ session was switched to. And the kind
    # of messages stored before 8: a message to a user that answered nothing was the bridge's
    # own (a command's answer, a notice).
    """
    UPDATE messages SET kind = 'notice'
        WHERE direction = 'out' AND reply_to IS NULL AND kind = 'message';
    CREATE TABLE qq_messages (
        account INTEGER NOT NULL,
        qq_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        outgoing INTEGER NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (account, qq_id)
    ) WITHOUT ROWID;
    CREATE INDEX qq_messages_msg ON qq_messages (message_id);
    CREATE INDEX qq_messages_time ON qq_messages (time);
    CREATE TABLE qq_bindings (
        session TEXT PRIMARY KEY,
        contact TEXT NOT NULL,
        updated REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 10: how much of each QQ reply QQ has (characters, and the QQ ids it went out as), so a
    # reply finished after the implementation dropped, or the bridge restarted, goes on where
    # it stopped.
    """
    CREATE TABLE qq_progress (
        token TEXT PRIMARY KEY,
        sent INTEGER NOT NULL,
        qq_ids TEXT NOT NULL,
        time REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 11: web-client replies kept until the client confirms it has stored them (`ack_message`),
    # so a tab that was closed while a reply ran gets it when it comes back.
    """
    CREATE TABLE client_replies (
        user_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        contactor_id TEXT NOT NULL,
        status TEXT NOT NULL,
        chunks TEXT NOT NULL,
        error TEXT,
        meta TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (user_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX client_replies_contactor ON client_replies (user_id, contactor_id);
    """,
    # 12: which bridge node runs each reply in flight, so in a cluster a node settles only the
    # replies of nodes that are gone (never a live node's running reply).
    """
    ALTER TABLE inflight ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE client_replies ADD COLUMN node TEXT NOT NULL DEFAULT '';
    """,
    # 13: images uploaded through the mio-chat client, on PostgreSQL, so every node of a cluster
    # serves them (named by content; a node's data folder keeps a copy as a cache). A SQLite
    # bridge keeps its uploads as files only and leaves this table empty.
    """
    CREATE TABLE uploads (
        name TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        size INTEGER NOT NULL,
        time REAL NOT NULL
    );
    """,
]
