/* chat.h — chat templates and stop strings: what turns a conversation into the prompt a
 * checkpoint was tuned on, and what ends an answer early.
 *
 * Checkpoints carry their chat format as a Jinja template (tokenizer_config.json's
 * "chat_template"). Debian has no Jinja for C, so recall recognises the templates it knows
 * and implements each as a formatter here, output for output:
 *
 *   llama2              Llama-2-chat's template (meta-llama/Llama-2-*-chat-hf):
 *                       "<s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ANSWER </s>"...
 *                       Roles alternate user/assistant after an optional first system
 *                       message; contents are stripped; no generation prompt (the prompt
 *                       ends in " [/INST]").
 *   longllama-instruct  LongLLaMA-Instruct-3Bv1.1's chat format, from its fine-tuning script
 *                       (instruction_fine_tuning/example_instchat_ft_3bv1.1_low_budget.sh)
 *                       and its demo (long_llama_instruct_colab.ipynb, SimpleChatBot):
 *                       BOS, "A chat between a user (denoted as USER:) and ... questions.\n\n",
 *                       then "\nUSER: " + text per user turn, "\nASSISTANT: " + text + EOS
 *                       per answer, and "\nASSISTANT: " to answer. That release has no
 *                       Jinja template; a system message replaces the opening sentence
 *                       (recall's choice: the format has no system slot). Stops at "USER:"
 *                       and "ASSISTANT:", as the demo does.
 *   plain               recall's fallback: "System: ...\nUser: ...\nAssistant: ...\n" (any
 *                       role, capitalised), ending in "Assistant:"; stops at "\nUser:".
 *
 * A template is chosen by name (--chat-template), else by recognising the checkpoint's
 * chat_template text, else plain. A template that is there but not recognised gives plain
 * and a warning (chat_template_load's `warn`).
 *
 * A formatted prompt is a list of parts: text, or the BOS / EOS token. Each text part is
 * tokenized on its own (SentencePiece, no BOS), as Hugging Face's Llama tokenizer does
 * between special tokens and as LongLLaMA's fine-tuning did for each piece, so a user's
 * "<s>" stays text and never becomes a control token. */
#ifndef RECALL_DAEMON_CHAT_H
#define RECALL_DAEMON_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"
#include "recall.pb-c.h"

#define CHAT_STOP_MAX 16       /* stop strings per Ask (the template's own included) */
#define CHAT_STOP_BYTES 256    /* longest stop string */
#define CHAT_MESSAGES_MAX 1024 /* messages per chat Ask */

typedef enum chat_template_kind {
    CHAT_TEMPLATE_PLAIN = 0,
    CHAT_TEMPLATE_LLAMA2,
    CHAT_TEMPLATE_LONGLLAMA_INSTRUCT,
} chat_template_kind_t;

typedef struct chat_template {
    chat_template_kind_t kind;
    char bos[64], eos[64]; /* how BOS / EOS print in a rendered prompt ("<s>", "</s>") */
    char source[160];      /* how it was chosen: "--chat-template", "tokenizer_config.json", ... */
} chat_template_t;

typedef struct chat_message {
    const char *role; /* "system" (or "developer"), "user", "assistant", ... */
    const char *content;
} chat_message_t;

typedef enum chat_part_kind { CHAT_PART_TEXT, CHAT_PART_BOS, CHAT_PART_EOS } chat_part_kind_t;

/* A formatted prompt. text is the whole prompt as the template renders it (BOS and EOS
 * printed as bos / eos), NUL-terminated; parts cut it into what is tokenized separately.
 * Owned by the caller: chat_prompt_free. */
typedef struct chat_part {
    chat_part_kind_t kind;
    size_t off, len; /* the part's bytes in text (BOS / EOS: their printed form) */
} chat_part_t;

typedef struct chat_prompt {
    char *text;
    size_t len;
    chat_part_t *parts; /* [n_parts], in order, covering text exactly */
    size_t n_parts;
} chat_prompt_t;

/* "plain", "llama2", "longllama-instruct"; static. */
const char *chat_template_name(chat_template_kind_t k);
/* By name; RC_ERR_INVALID for another. */
rc_t chat_template_from_name(const char *name, chat_template_kind_t *out);
/* Recognises a Jinja chat_template's text: 1 with *out set when it is one recall knows,
 * else 0. */
int chat_template_recognise(const char *jinja, chat_template_kind_t *out);

/* Chooses the template for the checkpoint in model_dir: `name` when not NULL (a name from
 * chat_template_name), else tokenizer_config.json's chat_template when recognised, else
 * plain. bos / eos strings come from tokenizer_config.json ("<s>" / "</s>" without one).
 * warn gets a sentence (else "") when the checkpoint has a template recall does not know,
 * or a tokenizer_config.json that does not parse: those give plain, not a failure.
 * RC_ERR_INVALID only for an unknown name. */
rc_t chat_template_load(const char *model_dir, const char *name, chat_template_t *out, char *warn,
                        size_t warnlen, char *err, size_t errlen);

/* Formats n messages with template t. RC_ERR_INVALID with err set for what the template
 * refuses (llama2: roles that do not alternate user/assistant, a role it has no place for;
 * longllama-instruct: a role other than system/user/assistant, a system message after the
 * first). RC_ERR_NOMEM. *out is the caller's (chat_prompt_free), left empty on failure. */
rc_t chat_format(const chat_template_t *t, const chat_message_t *m, size_t n, chat_prompt_t *out,
                 char *err, size_t errlen);
void chat_prompt_free(chat_prompt_t *p);

/* The template's own stop strings (static, NULL-terminated; may be empty). */
const char *const *chat_template_stops(chat_template_kind_t k);

/* Looks for stop strings in text[0..len). Returns 1 when one occurs, with *cut the offset
 * of the earliest match (the text to keep); else 0 with *cut the bytes that may be released
 * now: len minus the longest tail that could still grow into a stop string. */
int chat_stop_scan(const char *text, size_t len, const char *const *stops, size_t n_stops,
                   size_t *cut);

/* The Ask fields this module owns, checked before the Ask is queued: stop strings (at most
 * CHAT_STOP_MAX, none empty or over CHAT_STOP_BYTES, valid UTF-8) and chat messages (not with
 * a question, at most CHAT_MESSAGES_MAX, roles and contents valid UTF-8, all of it within
 * max_bytes). RC_ERR_INVALID / RC_ERR_LIMIT with err set. */
rc_t chat_ask_check(const Recall__AskRequest *q, size_t max_bytes, char *err, size_t errlen);

#endif
