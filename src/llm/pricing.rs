//! The per-model price table (USD per million tokens, input and output). A model id matches the
//! longest entry that equals it or that it extends with `-…` (so dated snapshots such as
//! `claude-sonnet-4-5-20250929` or `gpt-4o-mini-2024-07-18` find their family). A model not in
//! the table costs 0 and is flagged (`price_known = false` on its `model_calls` row, and a
//! warning in the log): the budgets then cannot protect the operator, who should add it here.
//! So a repository may only choose a priced model (`ORCH_LLM_MODELS`, by default
//! [`default_models`]; see `policy::Caps::refuse_model`), and [`estimate_cost_usd`] projects
//! an unpriced model's call as unbounded, so the budget check refuses it instead of waving it
//! through at 0.
//!
//! List prices as published by the providers in 2025; they change, so check them when editing.

/// Price of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

const fn p(input_per_mtok: f64, output_per_mtok: f64) -> Price {
    Price {
        input_per_mtok,
        output_per_mtok,
    }
}

/// (model id or family prefix, price).
pub const PRICES: &[(&str, Price)] = &[
    // Anthropic
    ("claude-opus-4-5", p(5.0, 25.0)),
    ("claude-opus-4-1", p(15.0, 75.0)),
    ("claude-opus-4", p(15.0, 75.0)),
    ("claude-sonnet-4-5", p(3.0, 15.0)),
    ("claude-sonnet-4", p(3.0, 15.0)),
    ("claude-3-7-sonnet", p(3.0, 15.0)),
    ("claude-3-5-sonnet", p(3.0, 15.0)),
    ("claude-haiku-4-5", p(1.0, 5.0)),
    ("claude-3-5-haiku", p(0.8, 4.0)),
    ("claude-3-haiku", p(0.25, 1.25)),
    // OpenAI
    ("gpt-5", p(1.25, 10.0)),
    ("gpt-5-mini", p(0.25, 2.0)),
    ("gpt-5-nano", p(0.05, 0.4)),
    ("gpt-4.1", p(2.0, 8.0)),
    ("gpt-4.1-mini", p(0.4, 1.6)),
    ("gpt-4.1-nano", p(0.1, 0.4)),
    ("gpt-4o", p(2.5, 10.0)),
    ("gpt-4o-mini", p(0.15, 0.6)),
    ("o4-mini", p(1.1, 4.4)),
    ("o3-mini", p(1.1, 4.4)),
    ("o3", p(2.0, 8.0)),
    // The offline fake provider.
    ("fake", p(0.0, 0.0)),
];

/// The models a repository may choose when `ORCH_LLM_MODELS` is not set: every priced model
/// of the table but the offline fake.
pub fn default_models() -> Vec<String> {
    PRICES
        .iter()
        .filter(|(id, _)| *id != "fake")
        .map(|(id, _)| id.to_string())
        .collect()
}

/// The price of `model`, or None when it is not in the table.
pub fn price(model: &str) -> Option<Price> {
    PRICES
        .iter()
        .filter(|(id, _)| model == *id || model.strip_prefix(id).is_some_and(|rest| rest.starts_with('-')))
        .max_by_key(|(id, _)| id.len())
        .map(|(_, price)| *price)
}

/// Cost in USD of `tokens_in` input and `tokens_out` output tokens; 0 for unknown models.
pub fn cost_usd(model: &str, tokens_in: u32, tokens_out: u32) -> f64 {
    match price(model) {
        Some(p) => (f64::from(tokens_in) * p.input_per_mtok + f64::from(tokens_out) * p.output_per_mtok) / 1_000_000.0,
        None => 0.0,
    }
}

/// The most a call can cost: its (estimated) input tokens and every output token it may use.
/// For the projected-cost check before a call (SPEC §10). A model without a price has no
/// bound: infinity, which no budget admits (never 0, which every budget would).
pub fn estimate_cost_usd(model: &str, tokens_in: u32, max_output_tokens: u32) -> f64 {
    match price(model) {
        Some(_) => cost_usd(model, tokens_in, max_output_tokens),
        None => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_family_wins() {
        assert_eq!(price("gpt-4o-mini-2024-07-18"), Some(p(0.15, 0.6)));
        assert_eq!(price("gpt-4o-2024-08-06"), Some(p(2.5, 10.0)));
        assert_eq!(price("claude-sonnet-4-5-20250929"), Some(p(3.0, 15.0)));
        assert_eq!(price("claude-opus-4-5"), Some(p(5.0, 25.0)));
        assert_eq!(price("claude-opus-4-20250514"), Some(p(15.0, 75.0)));
        assert_eq!(price("gpt-4"), None);
        assert_eq!(price("gpt-4ox"), None);
        assert_eq!(price("llama3.1:8b"), None);
        assert_eq!(price("o3"), Some(p(2.0, 8.0)));
    }

    #[test]
    fn costs_are_per_million_tokens() {
        assert!((cost_usd("claude-sonnet-4-5", 1_000_000, 1_000_000) - 18.0).abs() < 1e-9);
        assert!((cost_usd("gpt-4o-mini", 2_000, 500) - 0.0006).abs() < 1e-12);
        assert_eq!(cost_usd("my-local-model", 10_000, 10_000), 0.0);
        assert!((estimate_cost_usd("claude-sonnet-4-5", 2_000, 2_048) - (0.006 + 0.03072)).abs() < 1e-12);
        assert_eq!(
            estimate_cost_usd("my-local-model", 1, 1),
            f64::INFINITY,
            "an unpriced call is never projected at 0"
        );
        assert!(default_models().iter().all(|m| price(m).is_some()) && !default_models().contains(&"fake".to_string()));
    }
}
