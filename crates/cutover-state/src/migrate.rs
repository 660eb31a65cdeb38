//! The schema's versioned migrations, embedded in the binary and run by
//! sqlx's migrator when a store is opened: pending ones are applied, each
//! in its own transaction, and recorded in `_sqlx_migrations`; a store that
//! records a migration this binary does not know was written by a newer
//! cutover and is refused, untouched.

use std::borrow::Cow;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

use crate::StateError;

/// `(version, description, sql)`, in version order.
pub(crate) type Embedded = &'static [(i64, &'static str, &'static str)];

#[derive(Debug)]
struct Source(Embedded);

impl<'s> MigrationSource<'s> for Source {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The newest schema version this binary knows.
pub(crate) fn known(migrations: Embedded) -> i64 {
    migrations.last().map_or(0, |m| m.0)
}

/// Brings the store at `path` (named in errors) to this binary's schema.
pub(crate) async fn run<'c, A>(pool: A, migrations: Embedded, path: &str) -> Result<(), StateError>
where
    A: sqlx::Acquire<'c>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    let migrator = Migrator::new(Source(migrations))
        .await
        .map_err(|e| StateError::Corrupt(format!("the embedded schema: {e}")))?;
    let known = known(migrations);
    migrator.run(pool).await.map_err(|e| match e {
        MigrateError::VersionMissing(v) => StateError::TooNew {
            path: path.to_string(),
            version: v,
            known,
        },
        MigrateError::VersionMismatch(v) => StateError::Corrupt(format!(
            "{path}: schema migration {v} was applied with other SQL than this cutover's; the store was changed by hand or by another build"
        )),
        MigrateError::Dirty(v) => StateError::Corrupt(format!(
            "{path}: schema migration {v} was left half applied"
        )),
        MigrateError::Execute(source) => StateError::Db {
            path: path.to_string(),
            source,
        },
        other => StateError::Corrupt(format!("{path}: migrating the schema: {other}")),
    })
}
