//! `poc-client rooms`: the example room service (app mode, `examples/rooms`) end to end,
//! through Envoy. Rooms are `room-0`, `room-1`, ...; round R posts the message `message R` to
//! every room, so after R rounds each room's history is exactly `message 1` .. `message R`.
//!
//! - [`post_round`] posts one round: each post must be answered 201 by the application on
//!   the room's owner (by `/where`) as the R-th message of its room;
//! - [`verify_rooms`] reads every room: its history must be exactly the R messages, read
//!   from the application on its owner.
//!
//! A refusal that forwarded nothing (503 `state_unavailable` while a room's state is on its
//! way, 503 `owner_unavailable` or `where_unavailable` while an owner restarts, 421) is retried
//! for a bounded time and counted; anything else
//! fails the room. So a lost message, one counted twice, a history read anywhere but on its
//! owner, or a room that cannot be served fails the run.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::api::Api;

/// The name of room `i`.
pub fn room(i: usize) -> String {
    format!("room-{i}")
}

/// The message round `round` posts to every room.
pub fn message(round: u32) -> String {
    format!("message {round}")
}

/// How long one room's request keeps being retried after refusals that forwarded nothing.
const RETRY_FOR: Duration = Duration::from_secs(20);

/// What a run found. `examples` holds at most 10 failures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RoomsReport {
    pub rooms: usize,
    /// Rooms whose post or history was right, on the room's owner.
    pub correct: usize,
    /// Requests retried after a refusal that forwarded nothing.
    pub retried: usize,
    /// Answered by the application beside another instance than the room's owner.
    pub not_on_owner: usize,
    /// A post that was not the next message, or a history that is not every message once.
    pub wrong_history: usize,
    /// No usable answer within the retry bound.
    pub failed: usize,
    pub examples: Vec<String>,
}

impl RoomsReport {
    pub fn all_correct(&self) -> bool {
        self.correct == self.rooms
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "rooms {}: {} correct on their owner, {} not on their owner, {} wrong history, {} failed ({} retries)\n",
            self.rooms, self.correct, self.not_on_owner, self.wrong_history, self.failed, self.retried
        );
        for e in &self.examples {
            out += &format!("  {e}\n");
        }
        out += if self.all_correct() {
            "RESULT: PASS\n"
        } else {
            "RESULT: FAIL\n"
        };
        out
    }

    fn add(&mut self, outcome: Outcome) {
        self.retried += outcome.retried;
        let problem = match outcome.result {
            Ok(()) => {
                self.correct += 1;
                return;
            }
            Err(Problem::NotOnOwner(e)) => {
                self.not_on_owner += 1;
                e
            }
            Err(Problem::WrongHistory(e)) => {
                self.wrong_history += 1;
                e
            }
            Err(Problem::Failed(e)) => {
                self.failed += 1;
                e
            }
        };
        if self.examples.len() < 10 {
            self.examples.push(problem);
        }
    }
}

enum Problem {
    NotOnOwner(String),
    WrongHistory(String),
    Failed(String),
}

struct Outcome {
    retried: usize,
    result: Result<(), Problem>,
}

/// Sends what `request` builds until the answer is not a refusal that forwarded nothing, for
/// at most [`RETRY_FOR`]: the status, the JSON body, and how many retries it took.
async fn until_served(
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<(u16, serde_json::Value, usize), (String, usize)> {
    let started = Instant::now();
    let mut retried = 0;
    loop {
        let (status, body) = match request().send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let text = answer.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                (status, body)
            }
            Err(e) => return Err((e.to_string(), retried)),
        };
        let refused_before_forwarding = status == 421
            || (status == 503
                && [
                    "state_unavailable",
                    "owner_unavailable",
                    "where_unavailable",
                    "not_ready",
                ]
                .contains(&body["error"].as_str().unwrap_or_default()));
        if !refused_before_forwarding {
            return Ok((status, body, retried));
        }
        if started.elapsed() > RETRY_FOR {
            return Err((
                format!("still refused after {RETRY_FOR:?}: {status} {body}"),
                retried,
            ));
        }
        retried += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the application that answered (`instance` in its body) is `name`'s owner.
async fn on_owner(api: &Api, name: &str, body: &serde_json::Value) -> Result<(), Problem> {
    let owner = api
        .where_(name)
        .await
        .map_err(|e| Problem::Failed(format!("{name}: /where: {e}")))?
        .index;
    if body["instance"].as_u64() == Some(owner) {
        Ok(())
    } else {
        Err(Problem::NotOnOwner(format!(
            "{name}: answered by instance {}, owned by {owner}",
            body["instance"]
        )))
    }
}

async fn post_one(api: &Api, name: String, round: u32, check_owner: bool) -> Outcome {
    let url = format!("{}/rooms/{name}/messages", api.base());
    let sent = until_served(|| api.http().post(&url).body(message(round))).await;
    let (status, body, retried) = match sent {
        Ok(answer) => answer,
        Err((e, retried)) => {
            return Outcome {
                retried,
                result: Err(Problem::Failed(format!("{name}: {e}"))),
            }
        }
    };
    let result = if status != 201 {
        Err(Problem::Failed(format!("{name}: HTTP {status} {body}")))
    } else if body["seq"].as_u64() != Some(u64::from(round)) {
        Err(Problem::WrongHistory(format!(
            "{name}: posted as message {}, expected {round}",
            body["seq"]
        )))
    } else if check_owner {
        on_owner(api, &name, &body).await
    } else {
        Ok(())
    };
    Outcome { retried, result }
}

async fn verify_one(api: &Api, name: String, rounds: u32) -> Outcome {
    let url = format!("{}/rooms/{name}/messages", api.base());
    let (status, body, retried) = match until_served(|| api.http().get(&url)).await {
        Ok(answer) => answer,
        Err((e, retried)) => {
            return Outcome {
                retried,
                result: Err(Problem::Failed(format!("{name}: {e}"))),
            }
        }
    };
    let expected: Vec<(u64, String)> = (1..=rounds).map(|r| (u64::from(r), message(r))).collect();
    let held: Vec<(u64, String)> = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    (
                        m["seq"].as_u64().unwrap_or(0),
                        m["text"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let result = if status != 200 {
        Err(Problem::Failed(format!("{name}: HTTP {status} {body}")))
    } else if held != expected {
        Err(Problem::WrongHistory(format!(
            "{name}: {} messages held {:?}, expected {rounds}",
            held.len(),
            held.iter().map(|(s, _)| *s).collect::<Vec<_>>()
        )))
    } else {
        on_owner(api, &name, &body).await
    };
    Outcome { retried, result }
}

/// Posts round `round` to rooms `0..rooms`, `concurrency` at a time; each answer must come
/// from the room's owner by `/where` asked right after it (`check_owner`: pass false while
/// the members change, when the owner may change between the two).
pub async fn post_round(
    api: &Api,
    rooms: usize,
    round: u32,
    concurrency: usize,
    check_owner: bool,
) -> RoomsReport {
    let mut report = RoomsReport {
        rooms,
        ..RoomsReport::default()
    };
    let mut outcomes =
        futures::stream::iter((0..rooms).map(|i| post_one(api, room(i), round, check_owner)))
            .buffer_unordered(concurrency.max(1));
    while let Some(outcome) = outcomes.next().await {
        report.add(outcome);
    }
    report
}

/// Reads rooms `0..rooms`: each must hold exactly `rounds` messages, on its owner.
pub async fn verify_rooms(api: &Api, rooms: usize, rounds: u32, concurrency: usize) -> RoomsReport {
    let mut report = RoomsReport {
        rooms,
        ..RoomsReport::default()
    };
    let mut outcomes = futures::stream::iter((0..rooms).map(|i| verify_one(api, room(i), rounds)))
        .buffer_unordered(concurrency.max(1));
    while let Some(outcome) = outcomes.next().await {
        report.add(outcome);
    }
    report
}
