//! Training conversations → token ids with loss weights, through the model's chat template,
//! so a fine-tuned model sees exactly the prompts it will be served.
//!
//! Each assistant turn `i` with a weight is located by rendering the conversation up to it
//! twice: `messages[..i]` with the generation prompt (where the answer starts) and
//! `messages[..=i]` without (where it ends, end-of-turn token included, so the model learns to
//! stop). This relies on the template rendering conversations prefix by prefix, which every
//! chat template flint knows does; one that does not is refused rather than trained wrong.

use flint_engine::{finetune::TrainExample, Tokenizer};

use super::dataset::Conversation;
use crate::{
    api::openai::chat::chat_ids,
    chat_template::{ChatMessage, ChatTemplate},
};

/// Tokens of `conv` and the loss weight of each (the weight of predicting it).
pub fn example(tok: &Tokenizer, template: &ChatTemplate, conv: &Conversation) -> Result<TrainExample, String> {
    let msgs: Vec<ChatMessage> = conv.messages.iter().map(|t| ChatMessage::new(t.role.clone(), t.content.clone())).collect();
    let ids = chat_ids(tok, template, &msgs, false).map_err(|e| e.message)?;
    let mut weights = vec![0f32; ids.len()];
    for (i, turn) in conv.messages.iter().enumerate() {
        if turn.role != "assistant" || turn.weight == 0.0 {
            continue;
        }
        let start = chat_ids(tok, template, &msgs[..i], true).map_err(|e| e.message)?;
        let end = chat_ids(tok, template, &msgs[..=i], false).map_err(|e| e.message)?;
        if !(end.starts_with(&start) && ids.starts_with(&end)) {
            return Err(format!(
                "the chat template does not render message {i} as a continuation of the messages before it, \
                 so its tokens cannot be told apart for the loss"
            ));
        }
        for w in &mut weights[start.len()..end.len()] {
            *w = turn.weight;
        }
    }
    if !weights.iter().any(|&w| w > 0.0) {
        return Err("no assistant tokens to learn from".into());
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
        let ex = example(&tok, &template, &conv).unwrap();
        let learned: Vec<u32> = ex.ids.iter().zip(&ex.weights).filter(|(_, &w)| w > 0.0).map(|(&t, _)| t).collect();
        assert_eq!(tok.decode(&learned).unwrap(), "swordfish<|im_end|>\n");
        let silent = Conversation { messages: vec![turn("user", "hi", 0.0), turn("assistant", "x", 0.0)] };
        assert!(example(&tok, &template, &silent).unwrap_err().contains("no assistant tokens"));
    }
}
