//! Which member of a consumer works which partition: leases held in
//! PostgreSQL, not Kafka group membership.
//!
//! Each live member keeps one session (a connection detached from the pool)
//! on which it holds a shared advisory lock naming the consumer, so members
//! can be counted, and an exclusive advisory lock per partition it works.
//! The server drops a session's locks the moment the session ends: a member
//! that is SIGKILLed or restarted frees its partitions at once, and the next
//! balancing round of any member (the restarted one, or a survivor) takes
//! them. No broker session timeout is waited out and no group coordinator is
//! involved, so a restart is back in about a second on Kafka, on tansu and
//! on the embedded broker alike. A member cut off from PostgreSQL loses its
//! leases (the server notices through TCP keepalives within about 11 s), but
//! such a member could not have applied a record anyway.
//!
//! Every acquisition bumps the partition's epoch in `consumer_partitions`.
//! A member stores offsets only under the epoch it acquired
//! ([`super::dedupe::store_offset`]), so one that lost its lease without
//! noticing can never move an offset.

use std::{collections::BTreeSet, time::Duration};

use sqlx::{PgConnection, PgPool};

/// A topic partition.
pub type Partition = (String, i32);

/// A partition this member acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The epoch its offsets are written under.
    pub epoch: i64,
    /// Where the consumer stands in it (`None`: never started).
    pub next_offset: Option<i64>,
}

/// This member's lease session.
pub struct Leases {
    consumer: String,
    member: String,
    session: Option<PgConnection>,
}

/// How long a look at the lease session may take before the session counts as lost.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);

impl Leases {
    /// A member of `consumer`, not yet connected.
    pub fn new(consumer: &str) -> Self {
        Self { consumer: consumer.to_owned(), member: uuid::Uuid::now_v7().to_string(), session: None }
    }

    /// This member's id (logs, `consumer_partitions.owner`).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Opens the lease session if there is none, then counts the members
    /// on it (which proves it alive, with this member among them). An error
    /// means every lease is gone: the caller must stop working its
    /// partitions.
    pub async fn members(&mut self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        if self.session.is_none() {
            let opened = tokio::time::timeout(SESSION_TIMEOUT, open(pool, self.members_key())).await;
            self.session = Some(opened.unwrap_or(Err(sqlx::Error::PoolTimedOut))?);
        }
        let counted = self.count_members().await;
        if counted.is_err() {
            self.close();
        }
        counted
    }

    /// Ends the session: the server frees every lease of this member.
    pub fn close(&mut self) {
        self.session = None;
    }

    /// How many members of this consumer hold a lease session now (this one included).
    async fn count_members(&mut self) -> Result<usize, sqlx::Error> {
        let key = self.members_key();
        let session = self.session()?;
        let count: i64 = within(
            sqlx::query_scalar(
                "select count(*) from pg_locks \
                  where locktype = 'advisory' and objsubid = 1 and granted and mode = 'ShareLock' \
                    and database = (select oid from pg_database where datname = current_database()) \
                    and (classid::bigint << 32 | objid::bigint) = $1",
            )
            .bind(key)
            .fetch_one(session),
        )
        .await?;
        Ok(usize::try_from(count).unwrap_or(1).max(1))
    }

    /// Takes `partition` if no live member holds it: bumps its epoch and
    /// returns where the consumer stands in it.
    pub async fn try_acquire(&mut self, partition: &Partition) -> Result<Option<Lease>, sqlx::Error> {
        let key = self.partition_key(partition);
        let (consumer, member) = (self.consumer.clone(), self.member.clone());
        let session = self.session()?;
        let locked: bool =
            within(sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *session)).await?;
        if !locked {
            return Ok(None);
        }
        let (epoch, next_offset): (i64, Option<i64>) = within(
            sqlx::query_as(
                "insert into consumer_partitions (consumer, topic, partition, epoch, owner) values ($1, $2, $3, 1, $4) \
                 on conflict (consumer, topic, partition) do update \
                    set epoch = consumer_partitions.epoch + 1, owner = excluded.owner \
                 returning epoch, next_offset",
            )
            .bind(&consumer)
            .bind(&partition.0)
            .bind(partition.1)
            .bind(&member)
            .fetch_one(&mut *session),
        )
        .await?;
        Ok(Some(Lease { epoch, next_offset }))
    }

    /// Gives `partition` back (its work in hand is finished).
    pub async fn release(&mut self, partition: &Partition) -> Result<(), sqlx::Error> {
        let key = self.partition_key(partition);
        let session = self.session()?;
        within(sqlx::query("select pg_advisory_unlock($1)").bind(key).execute(session)).await?;
        Ok(())
    }

    fn session(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.session.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    fn members_key(&self) -> i64 {
        kernel::advisory_key(&format!("consumer-members:{}", self.consumer))
    }

    fn partition_key(&self, (topic, partition): &Partition) -> i64 {
        kernel::advisory_key(&format!("consumer-partition:{}:{topic}:{partition}", self.consumer))
    }
}

/// A session of its own (not a pooled connection: ending it must end its
/// locks), holding the shared lock that counts this member.
async fn open(pool: &PgPool, members_key: i64) -> Result<PgConnection, sqlx::Error> {
    let mut session = pool.acquire().await?.detach();
    // The server notices a vanished member (host gone, cable cut) by
    // itself within about 11 s and frees its leases.
    sqlx::query(
        "select set_config('tcp_keepalives_idle', '5', false), set_config('tcp_keepalives_interval', '2', false), \
                set_config('tcp_keepalives_count', '3', false), \
                set_config('application_name', 'ticketing consumer lease', false), \
                pg_advisory_lock_shared($1)",
    )
    .bind(members_key)
    .execute(&mut session)
    .await?;
    Ok(session)
}

async fn within<T>(work: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    tokio::time::timeout(SESSION_TIMEOUT, work).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// A fair share: each of `members` works at most ⌈partitions / members⌉.
/// Returns the partitions to give back (the highest first) and the share.
pub fn balance(all: &[Partition], held: &BTreeSet<Partition>, members: usize) -> (Vec<Partition>, usize) {
    let share = all.len().div_ceil(members.max(1));
    let give_back = held.iter().rev().take(held.len().saturating_sub(share)).cloned().collect();
    (give_back, share)
}

/// The partitions to try, in an order that starts at a different place
/// for each member, so members joining together do not all race for the same one.
pub fn candidates(all: &[Partition], held: &BTreeSet<Partition>, member: &str) -> Vec<Partition> {
    let free: Vec<Partition> = all.iter().filter(|p| !held.contains(*p)).cloned().collect();
    if free.is_empty() {
        return free;
    }
    let start = usize::try_from(fnv_hash(member.as_bytes()) % free.len() as u64).unwrap_or(0);
    free[start..].iter().chain(&free[..start]).cloned().collect()
}

/// A stable hash of `bytes` (FNV-1a), the same in every process.
fn fnv_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(n: i32) -> Vec<Partition> {
        (0..n).map(|p| ("t".to_owned(), p)).collect()
    }

    #[test]
    fn a_lone_member_takes_everything_and_gives_back_down_to_its_share_when_others_come() {
        let all = partitions(3);
        let held: BTreeSet<Partition> = all.iter().cloned().collect();
        assert_eq!(balance(&all, &held, 1), (vec![], 3));
        assert_eq!(balance(&all, &held, 2), (vec![("t".into(), 2)], 2));
        assert_eq!(balance(&all, &held, 3), (vec![("t".into(), 2), ("t".into(), 1)], 1));
        // More members than partitions: everyone may still hold one.
        assert_eq!(balance(&all, &BTreeSet::new(), 5).1, 1);
    }

    #[test]
    fn candidates_are_the_free_partitions_each_once() {
        let all = partitions(4);
        let held: BTreeSet<Partition> = [("t".to_owned(), 1)].into_iter().collect();
        let mut tried = candidates(&all, &held, "member-a");
        tried.sort();
        assert_eq!(tried, vec![("t".into(), 0), ("t".into(), 2), ("t".into(), 3)]);
    }
}
