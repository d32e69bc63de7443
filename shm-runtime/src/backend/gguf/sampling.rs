//! Sampling for a GGUF model: a request's sampler chain from its parameters, the fold of its
//! 64-bit seed to llama.cpp's 32 bits, and the log-probabilities reported with each token.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::backend::BackendError;
use crate::protocol::{ArchivedRequest, TokenLogprob, TopLogprob};

/// The sampler chain for a request to `model` (see the `gguf` module docs), primed with the
/// prompt for the repetition penalty.
pub(super) fn sampler_chain(
    model: &LlamaModel,
    req: &ArchivedRequest,
    prompt: &[LlamaToken],
    max: u32,
) -> Result<LlamaSampler, BackendError> {
    let p = &req.params;
    let (temp, top_k, top_p, min_p, penalty, presence, frequency) = (
        p.temperature.to_native(),
        p.top_k.to_native(),
        p.top_p.to_native(),
        p.min_p.to_native(),
        p.repetition_penalty.to_native(),
        p.presence_penalty.to_native(),
        p.frequency_penalty.to_native(),
    );
    // The protocol's limits checked these ranges already; llama.cpp must never see others.
    let invalid = |m: String| Err(BackendError::Invalid(m));
    if !(temp.is_finite() && temp >= 0.0) {
        return invalid(format!("temperature {temp} must be >= 0"));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return invalid(format!("top_p {top_p} must be in (0, 1]"));
    }
    if !(0.0..=1.0).contains(&min_p) {
        return invalid(format!("min_p {min_p} must be in 0..=1"));
    }
    let penalty = if penalty == 0.0 { 1.0 } else { penalty };
    if !(penalty.is_finite() && penalty > 0.0) {
        return invalid(format!("repetition_penalty {penalty} must be > 0"));
    }
    if !(presence.is_finite() && frequency.is_finite()) {
        return invalid("presence and frequency penalties must be finite".into());
    }
    let n_vocab = model.vocab().n_tokens();
    let mut chain = Vec::new();
    if penalty != 1.0 {
        // Over the prompt too: this sampler alone is primed with it, below.
        let mut repetition = LlamaSampler::penalties(n_vocab, 64, penalty, 0.0, 0.0);
        repetition.accept_many(prompt);
        chain.push(repetition);
    }
    if presence != 0.0 || frequency != 0.0 {
        // Over every token generated (the window holds all of them), not the prompt.
        let window = max.min(i32::MAX as u32) as i32;
        chain.push(LlamaSampler::penalties(
            n_vocab, window, 1.0, frequency, presence,
        ));
    }
    if temp == 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if top_k > 0 {
            chain.push(LlamaSampler::top_k(top_k.min(i32::MAX as u32) as i32));
        }
        if top_p < 1.0 {
            chain.push(LlamaSampler::top_p(top_p, 1));
        }
        if min_p > 0.0 {
            chain.push(LlamaSampler::min_p(min_p, 1));
        }
        chain.push(LlamaSampler::temp(temp));
        chain.push(LlamaSampler::dist(sampler_seed(p.seed.to_native())));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

/// The seed llama.cpp's sampler gets for a request's 64-bit `seed` (its `dist` sampler takes 32
/// bits): the two halves xor-ed, `hi ^ lo`. Changing any one bit of the seed changes the result,
/// and a seed below 2^32 is llama.cpp's own seed of that value (so a run can be compared with
/// llama.cpp's tools); 2^32 seeds share each result (for example `x` and `x << 32`), as any fold
/// to 32 bits must. The one exception: llama.cpp takes `0xFFFF_FFFF` (`LLAMA_DEFAULT_SEED`) to
/// mean "a new random seed each time", so that result becomes `0xFFFF_FFFE` and sampling stays
/// reproducible. This is the only place where a seed loses bits.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::gguf::sampler_seed;
///
/// assert_eq!(sampler_seed(42), 42); // llama.cpp's own seed 42
/// assert_eq!(sampler_seed((1 << 32) | 42), 1 ^ 42); // the high half counts too
/// assert_eq!(sampler_seed(u64::from(u32::MAX)), u32::MAX - 1); // never "a random seed"
/// ```
pub fn sampler_seed(seed: u64) -> u32 {
    const LLAMA_DEFAULT_SEED: u32 = u32::MAX;
    let folded = (seed >> 32) as u32 ^ seed as u32;
    if folded == LLAMA_DEFAULT_SEED {
        folded - 1
    } else {
        folded
    }
}

/// The log-probability of `chosen` under the softmax of `logits`, with the `k` most likely
/// tokens (most likely first; `text` names each).
pub(super) fn token_logprob(
    logits: &[f32],
    chosen: LlamaToken,
    k: usize,
    text: impl Fn(LlamaToken) -> String,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    let logprob = |l: f32| (l - log_z).min(0.0);
    // The k largest, kept sorted in a short list (k is at most a few dozen).
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if top.len() == k && top.last().is_some_and(|&(least, _)| l <= least) {
            continue;
        }
        let at = top.partition_point(|&(x, _)| x >= l);
        top.insert(at, (l, i));
        top.truncate(k);
    }
    let chosen_logit = usize::try_from(chosen.0)
        .ok()
        .and_then(|i| logits.get(i))
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    TokenLogprob {
        logprob: logprob(chosen_logit),
        text: text(chosen),
        top: top
            .into_iter()
            .map(|(l, i)| {
                let token = LlamaToken(i as i32);
                TopLogprob {
                    token: i as u32,
                    logprob: logprob(l),
                    text: text(token),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bit_of_the_seed_counts_and_small_seeds_stay_as_they_are() {
        assert_eq!(sampler_seed(42), 42);
        assert_ne!(sampler_seed(1), sampler_seed(1 | (1 << 40)));
        assert_ne!(sampler_seed(1 << 63), sampler_seed(0));
        // llama.cpp's "random seed" is never asked for.
        assert_ne!(sampler_seed(u64::from(u32::MAX)), u32::MAX);
        assert_ne!(sampler_seed(u64::MAX << 32), u32::MAX);
    }

    #[test]
    fn logprobs_are_normalised_and_the_top_tokens_sorted() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let l = token_logprob(&logits, LlamaToken(1), 3, |t| format!("t{}", t.0));
        let p: f32 = logits.iter().map(|&x| x.exp()).sum();
        assert!((l.logprob - (3.0 - p.ln())).abs() < 1e-5, "{l:?}");
        let ids: Vec<u32> = l.top.iter().map(|t| t.token).collect();
        assert_eq!(ids, [1, 3, 0], "ties keep the lower id first");
        assert_eq!(l.top[2].text, "t0");
        assert!(l.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(l.top.iter().all(|t| t.logprob <= 0.0));
    }
}
