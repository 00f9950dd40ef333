//! Checks request bodies against GitHub's REST description (`fixtures/github/github-rest-subset.json`,
//! see `fixtures/github/NOTICE.md`), with the checker the fake GitHub uses
//! (`orch::github::rest_schema`).

use serde_json::Value;

/// Asserts that every (method, path, body) is a valid request body of the operation it was sent to.
pub fn assert_bodies_valid(bodies: &[(String, String, Value)]) {
    let Some(description) = crate::common::rest_description() else {
        return;
    };
    for (method, path, body) in bodies {
        let problems = description.problems(method, path, body);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
