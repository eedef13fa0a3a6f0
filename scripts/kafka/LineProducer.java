// Kafka's own Java producer, for tests that need records written by a client other than
// kafka-python (e.g. compressed with snappy, lz4 or zstd by the Java codecs). Run in
// source-file mode, no build step:
//   java -cp '.kafka/libs/*' scripts/kafka/LineProducer.java BOOTSTRAP TOPIC CODEC[,CODEC...] < lines
// Sends each line of standard input as one record value (no key), line i through a producer
// with compression.type CODEC[i % number of codecs], then flushes and prints the count.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;

public class LineProducer {
    public static void main(String[] args) throws Exception {
        List<KafkaProducer<byte[], byte[]>> producers = new ArrayList<>();
        for (String codec : args[2].split(",")) {
            Properties props = new Properties();
            props.put("bootstrap.servers", args[0]);
            props.put("compression.type", codec);
            props.put("linger.ms", "50");
            props.put("key.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
            props.put("value.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
            producers.add(new KafkaProducer<>(props));
        }
        int n = 0;
        try (BufferedReader in = new BufferedReader(
                 new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                producers.get(n % producers.size()).send(
                    new ProducerRecord<>(args[1], line.getBytes(StandardCharsets.UTF_8)));
                n++;
            }
        }
        for (KafkaProducer<byte[], byte[]> producer : producers) {
            producer.flush();
            producer.close();
        }
        System.out.println(n);
    }
}
