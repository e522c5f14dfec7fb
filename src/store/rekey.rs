//! The migration step written in Rust: recompute every stored `email_key` under today's rule
//! (`domain::email_key`), which SQL cannot compute (UTS #46, NFKC casefold).

use std::collections::HashMap;

use crate::domain::email_key;

/// One step of a store's migration list.
pub(super) enum Migration {
    Sql(&'static str),
    /// Recompute `email_key` for every row (see `plan`).
    RekeyEmails,
}

/// A stored row as the rekey step reads it.
pub(super) struct StoredEmail {
    pub id: i64,
    pub email: String,
    pub key: String,
}

/// A row whose key changes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct NewKey {
    pub id: i64,
    pub key: String,
}

/// The keys that change, given every row in id order. Rows that the new rule makes one identity
/// are all kept, none edited: the earliest keeps the key (a new sign-up with that email is
/// `email_taken`), each later one gets `<key>#<id>`, which no valid address produces (a domain
/// has no `#`), so the unique index holds and the operator can merge them at leisure.
pub(super) fn plan(rows: impl IntoIterator<Item = StoredEmail>) -> Vec<NewKey> {
    let mut owners: HashMap<String, i64> = HashMap::new();
    let mut changes = Vec::new();
    for row in rows {
        let mut key = email_key(&row.email);
        if let Some(&earlier) = owners.get(&key) {
            tracing::warn!(
                kept = earlier,
                set_apart = row.id,
                "two stored users share one email under the Unicode-aware key; the later one is kept under a distinct key"
            );
            key = format!("{key}#{}", row.id);
        } else {
            owners.insert(key.clone(), row.id);
        }
        if key != row.key {
            changes.push(NewKey { id: row.id, key });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, email: &str) -> StoredEmail {
        // The key as the old rule stored it: the whole address lowercased.
        StoredEmail { id, email: email.to_owned(), key: email.to_lowercase() }
    }

    #[test]
    fn only_keys_that_change_are_rewritten() {
        let changes = plan([row(1, "ada@example.com"), row(2, "\u{212A}ay@bücher.de"), row(3, "M.Rossi@x.it")]);
        assert_eq!(changes, [NewKey { id: 2, key: "kay@xn--bcher-kva.de".into() }]);
    }

    #[test]
    fn the_earliest_of_colliding_rows_keeps_the_key_and_later_ones_are_set_apart() {
        let changes = plan([
            row(1, "ada@ｅｘａｍｐｌｅ.com"),
            row(2, "ada@example.com"),
            row(3, "bob@xn--bcher-kva.de"),
            row(4, "bob@bücher.de"),
            row(5, "ADA@example.com"),
        ]);
        assert_eq!(
            changes,
            [
                NewKey { id: 1, key: "ada@example.com".into() },
                NewKey { id: 2, key: "ada@example.com#2".into() },
                NewKey { id: 4, key: "bob@xn--bcher-kva.de#4".into() },
                NewKey { id: 5, key: "ada@example.com#5".into() },
            ]
        );
    }

    #[test]
    fn running_it_again_changes_nothing() {
        let rows = || [row(1, "ada@ｅｘａｍｐｌｅ.com"), row(2, "ada@example.com"), row(3, "ſam@x.org")];
        let first = plan(rows());
        let rekeyed = rows().map(|mut r| {
            if let Some(change) = first.iter().find(|c| c.id == r.id) {
                r.key = change.key.clone();
            }
            r
        });
        assert_eq!(plan(rekeyed), []);
    }
}
