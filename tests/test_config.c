/* test_config — config.json parsing: the real configs recall targets parse to the right
 * numbers, defaults apply only where they should, and every bad field is refused with a
 * status and a message that names it. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/config.h"
#include "tests/check.h"

static const char *LONGLLAMA_3B =
    "{\"architectures\": [\"LongLlamaForCausalLM\"],"
    " \"auto_map\": {\"AutoConfig\": \"configuration_longllama.LongLlamaConfig\","
    "   \"AutoModelForCausalLM\": \"modeling_longllama.LongLlamaForCausalLM\"},"
    " \"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\","
    " \"hidden_size\": 3200, \"initializer_range\": 0.02, \"intermediate_size\": 8640,"
    " \"last_context_length\": 1024, \"max_position_embeddings\": 2048,"
    " \"mem_attention_grouping\": null, \"mem_dtype\": \"bfloat16\", \"mem_layers\": [6, 12, 18],"
    " \"mem_positionals\": true, \"model_type\": \"longllama\", \"num_attention_heads\": 32,"
    " \"num_hidden_layers\": 26, \"pad_token_id\": 0, \"rms_norm_eps\": 1e-06,"
    " \"tie_word_embeddings\": false, \"torch_attention\": false, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.30.0\", \"use_cache\": true, \"vocab_size\": 32000}";

static const char *CODE_7B =
    "{\"architectures\": [\"LongLlamaForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 11008, \"last_context_length\": 3072,"
    " \"max_position_embeddings\": 4096, \"mem_attention_grouping\": [4, 2048],"
    " \"mem_dtype\": \"bfloat16\", \"mem_layers\": [8, 16, 24], \"mem_positionals\": true,"
    " \"model_type\": \"longllama\", \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
    " \"num_key_value_heads\": 32, \"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000,"
    " \"tie_word_embeddings\": false, \"torch_attention\": true, \"torch_dtype\": \"bfloat16\","
    " \"use_cache\": true, \"vocab_size\": 32016}";

static const char *LLAMA2_7B =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 11008, \"max_position_embeddings\": 4096, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 32, \"num_key_value_heads\": 32,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"float16\","
    " \"transformers_version\": \"4.31.0.dev0\", \"use_cache\": true, \"vocab_size\": 32000}";

/* The tiny LongLLaMA config the bad cases are cut from. */
static const char *TINY =
    "{\"architectures\": [\"LongLlamaForCausalLM\"], \"model_type\": \"longllama\","
    " \"hidden_size\": 64, \"intermediate_size\": 176, \"num_attention_heads\": 4,"
    " \"num_hidden_layers\": 4, \"vocab_size\": 512, \"max_position_embeddings\": 64,"
    " \"mem_layers\": [1, 2], \"mem_dtype\": \"float32\", \"last_context_length\": 32,"
    " \"mem_positionals\": true, \"mem_attention_grouping\": null, \"torch_attention\": false,"
    " \"rms_norm_eps\": 1e-06, \"torch_dtype\": \"float32\"}";

static rc_t parse(const char *json, model_config_t *c, char *err, size_t errlen)
{
    return model_config_parse(json, strlen(json), c, err, errlen);
}

/* TINY with field set to the JSON text value, or removed when value is NULL. */
static char *mutate(const char *base, const char *field, const char *value)
{
    cJSON *root = cJSON_Parse(base);
    cJSON_DeleteItemFromObjectCaseSensitive(root, field);
    if (value) cJSON_AddItemToObject(root, field, cJSON_Parse(value));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static void test_real_configs(void)
{
    model_config_t c;
    char err[512];
    CHECK_RC(parse(LONGLLAMA_3B, &c, err, sizeof err), RC_OK);
    CHECK(c.vocab_size == 32000 && c.hidden == 3200 && c.n_layers == 26);
    CHECK(c.n_heads == 32 && c.n_kv_heads == 32 && c.head_dim == 100 && c.ffn == 8640);
    CHECK(c.max_pos == 2048 && c.rope_theta == 10000.0f);
    CHECK_NEAR(c.rms_eps, 1e-6, 1e-12);
    CHECK(c.is_longllama && c.n_mem_layers == 3);
    CHECK(c.mem_layers[0] == 6 && c.mem_layers[1] == 12 && c.mem_layers[2] == 18);
    CHECK(c.mem_dtype == DTYPE_BF16 && c.torch_dtype == DTYPE_BF16);
    CHECK(c.last_context_length == 1024 && c.mem_positionals == 1);
    CHECK(c.mem_attention_grouping_set == 0);
    CHECK(c.tie_embeddings == 0 && c.bos_id == 1 && c.eos_id == 2);
    CHECK(c.rope_scaling == ROPE_SCALING_NONE);
    CHECK(model_config_is_mem_layer(&c, 12) && !model_config_is_mem_layer(&c, 13));

    CHECK_RC(parse(CODE_7B, &c, err, sizeof err), RC_OK);
    CHECK(c.vocab_size == 32016 && c.hidden == 4096 && c.n_layers == 32 && c.head_dim == 128);
    CHECK(c.rope_theta == 1e6f && c.max_pos == 4096 && c.last_context_length == 3072);
    CHECK(c.is_longllama && c.n_mem_layers == 3 && c.mem_layers[2] == 24);
    CHECK(c.mem_attention_grouping_set == 1);
    CHECK_NEAR(c.rms_eps, 1e-5, 1e-11);

    CHECK_RC(parse(LLAMA2_7B, &c, err, sizeof err), RC_OK);
    CHECK(!c.is_longllama && c.n_mem_layers == 0 && c.last_context_length == 0);
    CHECK(c.hidden == 4096 && c.head_dim == 128 && c.ffn == 11008 && c.vocab_size == 32000);
    CHECK(c.torch_dtype == DTYPE_F16 && c.rope_theta == 10000.0f);
}

static void test_defaults(void)
{
    model_config_t c;
    char err[512];
    /* LongLLaMA with no FoT fields: LongLLaMA defaults, last context cut to the window. */
    char *s = mutate(TINY, "mem_dtype", NULL);
    char *s2 = mutate(s, "last_context_length", NULL);
    char *s3 = mutate(s2, "mem_positionals", NULL);
    CHECK_RC(parse(s3, &c, err, sizeof err), RC_OK);
    CHECK(c.is_longllama && c.mem_dtype == DTYPE_BF16 && c.mem_positionals == 1);
    CHECK(c.last_context_length == 64);
    char *big = mutate(s3, "max_position_embeddings", "4096");
    CHECK_RC(parse(big, &c, err, sizeof err), RC_OK);
    CHECK(c.last_context_length == 1024);
    free(s), free(s2), free(s3), free(big);

    /* Recognized as LongLLaMA by a mem_layers field alone. */
    const char *by_field =
        "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 176,"
        " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 100,"
        " \"max_position_embeddings\": 128, \"mem_layers\": [1]}";
    CHECK_RC(parse(by_field, &c, err, sizeof err), RC_OK);
    CHECK(c.is_longllama && c.n_mem_layers == 1 && c.mem_layers[0] == 1);
    CHECK(c.last_context_length == 128);

    /* Plain llama with minimal fields: every default. */
    const char *minimal =
        "{\"hidden_size\": 64, \"intermediate_size\": 176, \"num_attention_heads\": 4,"
        " \"num_hidden_layers\": 2, \"vocab_size\": 100, \"max_position_embeddings\": 128}";
    CHECK_RC(parse(minimal, &c, err, sizeof err), RC_OK);
    CHECK(!c.is_longllama && c.n_mem_layers == 0 && c.n_kv_heads == 4 && c.head_dim == 16);
    CHECK(c.rope_theta == 10000.0f && c.bos_id == 1 && c.eos_id == 2 && c.tie_embeddings == 0);
    CHECK_NEAR(c.rms_eps, 1e-6, 1e-12);

    /* GQA, explicit head_dim, rope scaling kinds, eos as a list, null kv heads. */
    char *gqa = mutate(TINY, "num_key_value_heads", "2");
    CHECK_RC(parse(gqa, &c, err, sizeof err), RC_OK);
    CHECK(c.n_kv_heads == 2);
    char *hd = mutate(TINY, "head_dim", "32");
    CHECK_RC(parse(hd, &c, err, sizeof err), RC_OK);
    CHECK(c.head_dim == 32 && c.hidden == 64);
    char *nullkv = mutate(TINY, "num_key_value_heads", "null");
    CHECK_RC(parse(nullkv, &c, err, sizeof err), RC_OK);
    CHECK(c.n_kv_heads == 4);
    char *eos = mutate(TINY, "eos_token_id", "[7, 8]");
    CHECK_RC(parse(eos, &c, err, sizeof err), RC_OK);
    CHECK(c.eos_id == 7);
    free(gqa), free(hd), free(nullkv), free(eos);

    struct {
        const char *json;
        rope_scaling_type_t want;
        float factor;
        int orig;
    } rs[] = {
        {"{\"type\": \"linear\", \"factor\": 2.0}", ROPE_SCALING_LINEAR, 2.0f, 0},
        {"{\"type\": \"dynamic\", \"factor\": 4}", ROPE_SCALING_DYNAMIC, 4.0f, 0},
        {"{\"rope_type\": \"yarn\", \"factor\": 8, \"original_max_position_embeddings\": 4096}",
         ROPE_SCALING_YARN, 8.0f, 4096},
        {"{\"type\": \"ntk\", \"factor\": 1.5}", ROPE_SCALING_NTK, 1.5f, 0},
        {"null", ROPE_SCALING_NONE, 1.0f, 0},
    };
    for (size_t i = 0; i < sizeof rs / sizeof rs[0]; i++) {
        char *j = mutate(TINY, "rope_scaling", rs[i].json);
        CHECK_RC(parse(j, &c, err, sizeof err), RC_OK);
        CHECK_MSG(c.rope_scaling == rs[i].want && c.rope_factor == rs[i].factor &&
                      c.rope_original_max_pos == rs[i].orig,
                  "rope_scaling %s", rs[i].json);
        free(j);
    }
}

static void test_bad(void)
{
    struct {
        const char *field, *value; /* value NULL: field removed */
        rc_t want;
        const char *needle; /* must appear in the error */
    } cases[] = {
        {"hidden_size", NULL, RC_ERR_FORMAT, "hidden_size"},
        {"vocab_size", NULL, RC_ERR_FORMAT, "vocab_size"},
        {"num_hidden_layers", NULL, RC_ERR_FORMAT, "num_hidden_layers"},
        {"num_attention_heads", NULL, RC_ERR_FORMAT, "num_attention_heads"},
        {"intermediate_size", NULL, RC_ERR_FORMAT, "intermediate_size"},
        {"max_position_embeddings", NULL, RC_ERR_FORMAT, "max_position_embeddings"},
        {"hidden_size", "0", RC_ERR_INVALID, "hidden_size"},
        {"hidden_size", "-64", RC_ERR_INVALID, "hidden_size"},
        {"hidden_size", "64.5", RC_ERR_FORMAT, "hidden_size"},
        {"hidden_size", "\"64\"", RC_ERR_FORMAT, "hidden_size"},
        {"vocab_size", "0", RC_ERR_INVALID, "vocab_size"},
        {"intermediate_size", "-1", RC_ERR_INVALID, "intermediate_size"},
        {"num_hidden_layers", "0", RC_ERR_INVALID, "num_hidden_layers"},
        {"max_position_embeddings", "0", RC_ERR_INVALID, "max_position_embeddings"},
        {"num_attention_heads", "5", RC_ERR_INVALID, "num_attention_heads"},
        {"num_attention_heads", "0", RC_ERR_INVALID, "num_attention_heads"},
        {"num_key_value_heads", "3", RC_ERR_INVALID, "num_key_value_heads"},
        {"num_key_value_heads", "0", RC_ERR_INVALID, "num_key_value_heads"},
        {"num_attention_heads", "64", RC_ERR_INVALID, "head_dim"}, /* head_dim 1: odd */
        {"head_dim", "15", RC_ERR_INVALID, "head_dim"},
        {"head_dim", "0", RC_ERR_INVALID, "head_dim"},
        {"mem_layers", "[4]", RC_ERR_INVALID, "mem_layers"},
        {"mem_layers", "[-1]", RC_ERR_INVALID, "mem_layers"},
        {"mem_layers", "[2, 1]", RC_ERR_INVALID, "mem_layers"},
        {"mem_layers", "[1, 1]", RC_ERR_INVALID, "mem_layers"},
        {"mem_layers", "[1.5]", RC_ERR_FORMAT, "mem_layers"},
        {"mem_layers", "3", RC_ERR_FORMAT, "mem_layers"},
        {"mem_dtype", "\"int8\"", RC_ERR_UNSUPPORTED, "mem_dtype"},
        {"mem_dtype", "16", RC_ERR_FORMAT, "mem_dtype"},
        {"torch_dtype", "\"float64\"", RC_ERR_UNSUPPORTED, "torch_dtype"},
        {"mem_positionals", "false", RC_ERR_UNSUPPORTED, "mem_positionals=false is not supported"},
        {"mem_positionals", "\"yes\"", RC_ERR_FORMAT, "mem_positionals"},
        {"last_context_length", "65", RC_ERR_INVALID, "last_context_length"},
        {"last_context_length", "0", RC_ERR_INVALID, "last_context_length"},
        {"mem_attention_grouping", "[0, 16]", RC_ERR_FORMAT, "mem_attention_grouping"},
        {"rope_scaling", "{\"type\": \"llama3\", \"factor\": 8}", RC_ERR_UNSUPPORTED,
         "rope_scaling"},
        {"rope_scaling", "{\"type\": \"linear\"}", RC_ERR_INVALID, "rope_scaling.factor"},
        {"rope_scaling", "{\"type\": \"linear\", \"factor\": -2}", RC_ERR_INVALID,
         "rope_scaling.factor"},
        {"rope_scaling", "{\"factor\": 2}", RC_ERR_FORMAT, "rope_scaling"},
        {"rope_scaling", "\"linear\"", RC_ERR_FORMAT, "rope_scaling"},
        {"rope_theta", "0", RC_ERR_INVALID, "rope_theta"},
        {"rms_norm_eps", "-1e-6", RC_ERR_INVALID, "rms_norm_eps"},
        {"tie_word_embeddings", "1", RC_ERR_FORMAT, "tie_word_embeddings"},
        {"bos_token_id", "600", RC_ERR_INVALID, "bos_token_id"},
        {"eos_token_id", "-3", RC_ERR_FORMAT, "eos_token_id"},
        {"hidden_act", "\"gelu\"", RC_ERR_UNSUPPORTED, "hidden_act"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *j = mutate(TINY, cases[i].field, cases[i].value);
        model_config_t c;
        char err[512] = "untouched";
        rc_t rc = parse(j, &c, err, sizeof err);
        CHECK_MSG(rc == cases[i].want, "%s=%s: rc %d, want %d (%s)", cases[i].field,
                  cases[i].value ? cases[i].value : "(absent)", rc, cases[i].want, err);
        CHECK_MSG(strstr(err, cases[i].needle) != NULL, "%s=%s: error \"%s\" lacks \"%s\"",
                  cases[i].field, cases[i].value ? cases[i].value : "(absent)", err,
                  cases[i].needle);
        free(j);
    }

    /* A plain LLaMA config does not pick up FoT checks it has no fields for. */
    model_config_t c;
    char err[512];
    char *nolong = mutate(LLAMA2_7B, "max_position_embeddings", "512");
    CHECK_RC(parse(nolong, &c, err, sizeof err), RC_OK);
    CHECK(c.last_context_length == 0);
    free(nolong);

    /* Not JSON, not an object, truncated, an error buffer of one byte. */
    CHECK_RC(parse("{\"hidden_size\": 64,", &c, err, sizeof err), RC_ERR_FORMAT);
    CHECK(strstr(err, "JSON") != NULL);
    CHECK_RC(parse("[1, 2]", &c, err, sizeof err), RC_ERR_FORMAT);
    CHECK_RC(model_config_parse(TINY, 10, &c, err, sizeof err), RC_ERR_FORMAT);
    char tiny_err[1] = {'x'};
    CHECK_RC(parse("", &c, tiny_err, sizeof tiny_err), RC_ERR_FORMAT);
    CHECK(tiny_err[0] == '\0');
}

static void test_load_file(void)
{
    model_config_t c;
    char err[512];
    char dir[] = "/tmp/recall_test_config_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_RC(model_config_load(dir, &c, err, sizeof err), RC_ERR_NOT_FOUND);
    CHECK(strstr(err, "config.json") != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(LONGLLAMA_3B, f);
        fclose(f);
    }
    CHECK_RC(model_config_load(dir, &c, err, sizeof err), RC_OK);
    CHECK(c.hidden == 3200 && c.n_mem_layers == 3);
    unlink(path);
    rmdir(dir);
}

/* "recall_session_defaults": memory and k read; absent means none; anything else refused. */
static void test_session_defaults(void)
{
    model_config_t c;
    char err[512];
    CHECK_RC(parse(TINY, &c, err, sizeof err), RC_OK);
    CHECK(c.default_memory[0] == '\0' && c.default_k == 0);
    char *s = mutate(TINY, "recall_session_defaults", "{\"memory\": \"knn\", \"k\": 128}");
    CHECK_RC(parse(s, &c, err, sizeof err), RC_OK);
    CHECK(!strcmp(c.default_memory, "knn") && c.default_k == 128);
    free(s);
    const struct {
        const char *value, *needle;
    } bad[] = {{"{\"memory\": \"fast\"}", "memory"},
               {"{\"k\": 0.5}", "\"k\""},
               {"{\"k\": 5000}", "4096"},
               {"{\"window\": 64}", "window"},
               {"[1]", "object"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = mutate(TINY, "recall_session_defaults", bad[i].value);
        err[0] = '\0';
        CHECK_MSG(parse(s, &c, err, sizeof err) != RC_OK && strstr(err, bad[i].needle),
                  "recall_session_defaults %s: \"%s\"", bad[i].value, err);
        free(s);
    }
}

int main(void)
{
    test_real_configs();
    test_defaults();
    test_bad();
    test_session_defaults();
    test_load_file();
    return check_summary();
}
