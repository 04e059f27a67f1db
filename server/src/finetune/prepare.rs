//! Training conversations → token ids with loss weights, through the model's chat template,
//! so a fine-tuned model sees exactly the prompts it will be served.
//!
//! Each assistant turn `i` with a weight is located by rendering the conversation up to it
//! twice: `messages[..i]` with the generation prompt (where the answer starts) and
//! `messages[..=i]` without (where it ends, end-of-turn token included, so the model learns to
//! stop). This relies on the template rendering conversations prefix by prefix, which every
//! chat template flint knows does; one that does not is refused rather than trained wrong.
//!
//! Training reads an example's first `max_seq_len` tokens only, so an example is cut there,
//! and turns that start beyond it are not rendered: an example's cost is one render of it
//! plus two per weighted turn within `max_seq_len`, not two per turn of the whole line.

use flint_engine::{finetune::TrainExample, Tokenizer};

use super::dataset::{Conversation, DatasetError};
use crate::{
    chat_template::{ChatMessage, ChatTemplate},
    generation::prompt::{chat_ids, Cancel},
};

/// Tokens of `conv` (the example on line `line` of its file) and the loss weight of each
/// (the weight of predicting it), cut at `max_seq_len` tokens.
pub fn example(
    tok: &Tokenizer,
    template: &ChatTemplate,
    conv: &Conversation,
    line: usize,
    max_seq_len: usize,
) -> Result<TrainExample, DatasetError> {
    let bad = |message: String| DatasetError::new(line, message);
    let ids_of = |msgs: &[ChatMessage], add_generation_prompt: bool| {
        chat_ids(tok, template, msgs, add_generation_prompt, &Cancel::default()).map_err(|e| bad(e.to_string()))
    };
    let msgs: Vec<ChatMessage> = conv.messages.iter().map(|t| ChatMessage::new(t.role.clone(), t.content.clone())).collect();
    let mut ids = ids_of(&msgs, false)?;
    let mut weights = vec![0f32; ids.len()];
    let mut weighted_turns = false;
    for (i, turn) in conv.messages.iter().enumerate() {
        if turn.role != "assistant" || turn.weight == 0.0 {
            continue;
        }
        weighted_turns = true;
        let start = ids_of(&msgs[..i], true)?;
        if start.len() >= max_seq_len {
            break;
        }
        let end = ids_of(&msgs[..=i], false)?;
        if !(end.starts_with(&start) && ids.starts_with(&end)) {
            return Err(bad(format!(
                "the chat template does not render message {i} as a continuation of the messages before it, \
                 so its tokens cannot be told apart for the loss"
            )));
        }
        for w in &mut weights[start.len()..end.len()] {
            *w = turn.weight;
        }
    }
    ids.truncate(max_seq_len);
    weights.truncate(max_seq_len);
    // As training counts: nothing predicts the first token.
    if !weights.iter().skip(1).any(|&w| w > 0.0) {
        return Err(bad(if weighted_turns && ids.len() == max_seq_len {
            format!("no assistant tokens within the first {max_seq_len} tokens (`hyperparameters.max_seq_len`)")
        } else {
            "no assistant tokens to learn from".into()
        }));
    }
    Ok(TrainExample { ids, weights })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::dataset::Turn;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn only_weighted_assistant_tokens_count() {
        let tok = Tokenizer::byte_level().unwrap();
        let cfg = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
        let template = ChatTemplate::from_tokenizer_config(&cfg).unwrap().unwrap();
        let turn = |role: &str, content: &str, weight: f32| Turn { role: role.into(), content: content.into(), weight };
        let conv = Conversation {
            messages: vec![
                turn("user", "hi", 0.0),
                turn("assistant", "no", 0.0),
                turn("user", "pw?", 0.0),
                turn("assistant", "swordfish", 1.0),
            ],
        };
        let ex = example(&tok, &template, &conv, 1, 1024).unwrap();
        let learned: Vec<u32> = ex.ids.iter().zip(&ex.weights).filter(|(_, &w)| w > 0.0).map(|(&t, _)| t).collect();
        assert_eq!(tok.decode(&learned).unwrap(), "swordfish<|im_end|>\n");
        let silent = Conversation { messages: vec![turn("user", "hi", 0.0), turn("assistant", "x", 0.0)] };
        assert!(example(&tok, &template, &silent, 4, 1024).unwrap_err().to_string().starts_with("line 4: no assistant tokens"));
        // Cut at `max_seq_len`: the answer starts past 20 tokens, so nothing is left to learn.
        let e = example(&tok, &template, &conv, 2, 20).unwrap_err();
        assert!(e.message.contains("within the first 20 tokens"), "{e}");
        let cut = example(&tok, &template, &conv, 1, ex.ids.len() - 3).unwrap();
        assert_eq!((cut.ids.len(), cut.weights.len()), (ex.ids.len() - 3, ex.ids.len() - 3));
        assert_eq!(cut.ids[..], ex.ids[..ex.ids.len() - 3]);
    }
}
