//! The API's own PostgreSQL role, made by the migration step: the only step that runs with
//! the owner's (master) credentials. The role may read and write the rows of the schema's
//! tables and nothing else: no DDL, no other database's objects, no role management.

use anyhow::Context;

use super::{MIGRATION_LOCK_KEY, PostgresStore};

impl PostgresStore {
    /// Creates `role` when missing, sets its password and grants it DML on every table and
    /// sequence of the current schema. Idempotent: run after every migration.
    pub async fn ensure_app_role(&self, role: &str, password: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!role.is_empty(), "DATABASE_APP_ROLE is empty");
        anyhow::ensure!(!password.is_empty(), "DATABASE_APP_PASSWORD is empty: the API role needs a password");
        let mut client = self.pool.get().await.context("connecting to PostgreSQL to set up the API role")?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
        let owner: String = tx.query_one("SELECT current_user::text", &[]).await?.get(0);
        anyhow::ensure!(owner != role, "DATABASE_APP_ROLE must differ from the migrating role {owner:?}");
        let exists: bool =
            tx.query_one("SELECT EXISTS(SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role]).await?.get(0);
        // A SCRAM verifier, not the password: ALTER ROLE is DDL, which the server may log.
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let statements = tx
            .query_one(
                "SELECT format('CREATE ROLE %I', $1::text), \
                        format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text), \
                        format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema()), \
                        format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1::text), \
                        format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), $1::text), \
                        format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I', \
                               current_schema(), $1::text), \
                        format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', current_schema(), $1::text)",
                &[&role, &verifier],
            )
            .await?;
        let skip = usize::from(exists);
        for i in skip..statements.len() {
            let statement: String = statements.get(i);
            tx.batch_execute(&statement).await.with_context(|| format!("setting up the API role {role:?}"))?;
        }
        tx.commit().await?;
        Ok(())
    }
}
