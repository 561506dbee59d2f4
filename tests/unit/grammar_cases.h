/* grammar_cases.h -- the keyword-by-keyword {schema, instance, accepted}
 * table shared by test_grammar_schema.c (byte level) and
 * test_grammar_check.c (tokenized, through qkvd grammar-check). Instances
 * are in the compact form the grammar generates. */
#ifndef QKVD_TEST_GRAMMAR_CASES_H
#define QKVD_TEST_GRAMMAR_CASES_H

typedef struct scase { const char *schema; const char *instance; int ok; } scase;

static const scase grammar_cases[] = {
    /* type */
    {"{\"type\":\"string\"}", "\"abc\"", 1},
    {"{\"type\":\"string\"}", "\"a\\\"b\\\\c\\u00e9\\n\"", 1},
    {"{\"type\":\"string\"}", "\"a\nb\"", 0},
    {"{\"type\":\"string\"}", "12", 0},
    {"{\"type\":\"integer\"}", "-12", 1},
    {"{\"type\":\"integer\"}", "012", 0},
    {"{\"type\":\"integer\"}", "1.5", 0},
    {"{\"type\":\"number\"}", "-1.5e+10", 1},
    {"{\"type\":\"number\"}", "1.", 0},
    {"{\"type\":\"boolean\"}", "true", 1},
    {"{\"type\":\"boolean\"}", "null", 0},
    {"{\"type\":\"null\"}", "null", 1},
    {"{\"type\":[\"string\",\"null\"]}", "null", 1},
    {"{\"type\":[\"string\",\"null\"]}", "\"x\"", 1},
    {"{\"type\":[\"string\",\"null\"]}", "1", 0},
    {"{}", "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", 1},
    {"true", "[true,false,-0.5]", 1},
    /* enum / const */
    {"{\"enum\":[\"red\",\"green\",1,null,{\"a\":1}]}", "\"green\"", 1},
    {"{\"enum\":[\"red\",\"green\",1,null,{\"a\":1}]}", "{\"a\":1}", 1},
    {"{\"enum\":[\"red\",\"green\",1,null,{\"a\":1}]}", "\"blue\"", 0},
    {"{\"type\":\"string\",\"enum\":[\"a\",1]}", "1", 0},
    {"{\"const\":\"x\\\"y\"}", "\"x\\\"y\"", 1},
    {"{\"const\":42}", "43", 0},
    /* objects */
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}", "{\"a\":1}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}", "{\"a\":1,\"b\":\"x\"}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}", "{\"b\":\"x\"}", 0},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}", "{\"a\":\"1\"}", 0},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}}}", "{}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}}}", "{\"b\":\"x\"}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}}}", "{,\"b\":\"x\"}", 0},
    {"{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},\"required\":[\"c\"]}", "{\"a\":1,\"c\":2}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},\"required\":[\"c\"]}", "{\"c\":2}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},\"required\":[\"c\"]}", "{\"a\":1,\"b\":2}", 0},
    /* additionalProperties: absent means none generated; false; true; a schema */
    {"{\"type\":\"object\",\"properties\":{\"a\":{}}}", "{\"a\":1,\"z\":2}", 0},
    {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":false}", "{\"z\":2}", 0},
    {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":true}", "{\"a\":1,\"z\":[2]}", 1},
    {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":true}", "{\"z\":2,\"y\":3}", 1},
    {"{\"type\":\"object\",\"properties\":{\"ab\":{}},\"additionalProperties\":true}", "{\"a\":2,\"abc\":3,\"\":4}", 1},
    {"{\"type\":\"object\",\"properties\":{\"ab\":{}},\"additionalProperties\":true}", "{\"z\":2,\"ab\":3}", 0},
    {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", "{\"x\":1,\"y\":2}", 1},
    {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}", "{\"x\":\"1\"}", 0},
    {"{\"type\":\"object\"}", "{}", 1},
    /* arrays */
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[]", 1},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[1,2,3]", 1},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", "[1,\"2\"]", 0},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":3}", "[1]", 0},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":3}", "[1,2]", 1},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":3}", "[1,2,3]", 1},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":3}", "[1,2,3,4]", 0},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}", "[\"a\",1]", 1},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}", "[\"a\"]", 1},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}", "[\"a\",1,2]", 0},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}", "[1]", 0},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"}],\"items\":{\"type\":\"null\"},\"minItems\":3}", "[\"a\",null,null]", 1},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"}],\"items\":{\"type\":\"null\"},\"minItems\":3}", "[\"a\",null]", 0},
    {"{\"type\":\"array\",\"maxItems\":0}", "[]", 1},
    {"{\"type\":\"array\",\"maxItems\":0}", "[1]", 0},
    /* strings */
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"a\"", 0},
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"ab\"", 1},
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"\xc3\xa9\xc3\xa9\xc3\xa9\"", 1},
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"a\\nb\"", 1},
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", "\"abcd\"", 0},
    {"{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d{3}$\"}", "\"AB-123\"", 1},
    {"{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d{3}$\"}", "\"AB-12\"", 0},
    {"{\"type\":\"string\",\"pattern\":\"(cat|dog)s?\"}", "\"dogs\"", 1},
    {"{\"type\":\"string\",\"pattern\":\"a.c\"}", "\"a\\\"c\"", 1},
    {"{\"type\":\"string\",\"pattern\":\"a.c\"}", "\"a\\nc\"", 0},
    /* formats */
    {"{\"type\":\"string\",\"format\":\"date\"}", "\"2024-02-28\"", 1},
    {"{\"type\":\"string\",\"format\":\"date\"}", "\"2024-02-30\"", 0},
    {"{\"type\":\"string\",\"format\":\"date\"}", "\"2024-13-01\"", 0},
    {"{\"type\":\"string\",\"format\":\"time\"}", "\"23:59:59Z\"", 1},
    {"{\"type\":\"string\",\"format\":\"time\"}", "\"24:00:00Z\"", 0},
    {"{\"type\":\"string\",\"format\":\"date-time\"}", "\"2024-01-31T12:00:00.123+02:00\"", 1},
    {"{\"type\":\"string\",\"format\":\"uuid\"}", "\"123e4567-e89b-12d3-a456-426614174000\"", 1},
    {"{\"type\":\"string\",\"format\":\"uuid\"}", "\"123e4567-e89b-12d3-a456-42661417400\"", 0},
    {"{\"type\":\"string\",\"format\":\"ipv4\"}", "\"192.168.0.255\"", 1},
    {"{\"type\":\"string\",\"format\":\"ipv4\"}", "\"192.168.0.256\"", 0},
    {"{\"type\":\"string\",\"format\":\"email\"}", "\"jo.doe+x@mail.example.com\"", 1},
    {"{\"type\":\"string\",\"format\":\"email\"}", "\"jo@localhost\"", 0},
    {"{\"type\":\"string\",\"format\":\"uri\"}", "\"https://example.com/a/b.html\"", 1},
    {"{\"type\":\"string\",\"format\":\"uri\"}", "\"example.com\"", 0},
    /* numbers with bounds */
    {"{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "0.25", 1},
    {"{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "1.0", 1},
    {"{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "1.5", 0},
    {"{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", "-0.5", 0},
    {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":2}", "0", 0},
    {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":2}", "0.001", 1},
    {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":2}", "1.999", 1},
    {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":2}", "2", 0},
    {"{\"type\":\"number\",\"minimum\":-3,\"maximum\":-1}", "-2.5", 1},
    {"{\"type\":\"number\",\"minimum\":-3,\"maximum\":-1}", "-0.5", 0},
    {"{\"type\":\"number\",\"minimum\":-3,\"maximum\":-1}", "-3.5", 0},
    {"{\"type\":\"number\",\"maximum\":10}", "-1000.5", 1},
    /* anyOf / oneOf / allOf */
    {"{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}", "\"a\"", 1},
    {"{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}", "\"ab\"", 0},
    {"{\"oneOf\":[{\"const\":1},{\"const\":2}]}", "2", 1},
    {"{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]},"
     "{\"properties\":{\"b\":{\"type\":\"string\"}},\"required\":[\"b\"]}]}", "{\"a\":1,\"b\":\"x\"}", 1},
    {"{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]},"
     "{\"properties\":{\"b\":{\"type\":\"string\"}},\"required\":[\"b\"]}]}", "{\"a\":1}", 0},
    {"{\"allOf\":[{\"type\":\"integer\",\"minimum\":0},{\"maximum\":5}]}", "6", 0},
    {"{\"allOf\":[{\"type\":\"integer\",\"minimum\":0},{\"maximum\":5}]}", "5", 1},
    {"{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"string\"}},\"anyOf\":[{\"required\":[\"k\"]}]}", "{\"k\":\"v\"}", 1},
    {"{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"string\"}},\"anyOf\":[{\"required\":[\"k\"]}]}", "{}", 0},
    /* $ref, $defs, definitions, recursion */
    {"{\"$defs\":{\"pos\":{\"type\":\"integer\",\"minimum\":1}},\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/pos\"}}", "[1,2]", 1},
    {"{\"$defs\":{\"pos\":{\"type\":\"integer\",\"minimum\":1}},\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/pos\"}}", "[0]", 0},
    {"{\"definitions\":{\"s\":{\"type\":\"string\"}},\"$ref\":\"#/definitions/s\"}", "\"x\"", 1},
    {"{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}},"
     "\"required\":[\"v\"]}", "{\"v\":1,\"kids\":[{\"v\":2},{\"v\":3,\"kids\":[{\"v\":4,\"kids\":[]}]}]}", 1},
    {"{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}},"
     "\"required\":[\"v\"]}", "{\"v\":1,\"kids\":[{\"kids\":[]}]}", 0},
    {"{\"$defs\":{\"list\":{\"anyOf\":[{\"type\":\"null\"},{\"type\":\"object\",\"properties\":{\"h\":{\"type\":\"integer\"},"
     "\"t\":{\"$ref\":\"#/$defs/list\"}},\"required\":[\"h\",\"t\"]}]}},\"$ref\":\"#/$defs/list\"}", "{\"h\":1,\"t\":{\"h\":2,\"t\":null}}", 1},
    {"{\"$ref\":\"#/$defs/a~1b\",\"$defs\":{\"a/b\":{\"const\":true}}}", "true", 1},
    /* annotations are ignored */
    {"{\"title\":\"T\",\"description\":\"D\",\"default\":1,\"examples\":[1],\"$schema\":\"x\",\"$id\":\"y\",\"$comment\":\"c\",\"type\":\"integer\"}", "7", 1},
};

#endif
